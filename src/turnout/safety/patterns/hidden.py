"""``hidden_instructions``: text in a document or a tool's output that addresses the AI reading
it ("if you are an AI…", "do not tell the user", HTML comments to the assistant)."""

from __future__ import annotations

from turnout.safety.patterns.base import HIDDEN, Builder

_b = Builder()
add, phrase = _b.add, _b.phrase

_AI = (
    r"ai|a\.i\.|llms?|large language models?|language models?|chatbots?|ai assistants?|assistants?|bots?|agents?|"
    r"ai agents?|ai models?|gpt|chatgpt|claude|gemini|copilot|automated (?:systems?|agents?|assistants?|screening "
    r"systems?|tools?|readers?|reviewers?)|screening systems?|crawlers?|summari[sz]ers?|llm-based \w+|ai-based \w+|"
    r"ai systems?|ai tools?|machine readers?"
)
_AI_NEEDS = (
    "=ai",
    "=llm",
    "=llms",
    "language",
    "chatbot",
    "assistant",
    "=bot",
    "=bots",
    "agent",
    "=gpt",
    "chatgpt",
    "claude",
    "gemini",
    "copilot",
    "automated",
    "screening",
    "crawler",
    "summari",
    "machine",
    "a.i.",
)
add(HIDDEN, 0.75, rf"\bif you(?: are|'re| re|re)? (?:an? |the |any )?(?:{_AI})\b", "if you")
add(
    HIDDEN,
    0.7,
    r"\b(?:note|message|instructions?|attention|important|notice|reminder|warning|hint|p\.?s\.?|memo|directive|"
    rf"request|command|order|psst|hey)\b[^.\n]{{0,10}}?\b(?:to|for)\s+(?:the |any |all |automated |every )*(?:{_AI})\b",
    _AI_NEEDS,
    (
        "note",
        "message",
        "instruction",
        "attention",
        "important",
        "notice",
        "reminder",
        "warning",
        "hint",
        "p.s",
        "ps",
        "memo",
        "directive",
        "request",
        "command",
        "order",
        "psst",
        "hey",
    ),
)
add(
    HIDDEN,
    0.75,
    rf"\b(?:{_AI})\b[^.\n]{{0,30}}?\b(?:reading|processing|summari[sz]ing|parsing|analy[sz]ing|scanning|ingesting|"
    r"crawling|reviewing|seeing|(?:that|who|which) (?:reads?|process(?:es)?|summari[sz]es?))\b[^.\n]{0,15}?"
    r"\b(?:this|these|the following|my)\b",
    (
        "reading",
        "process",
        "summari",
        "parsing",
        "analy",
        "scanning",
        "ingesting",
        "crawling",
        "reviewing",
        "seeing",
        "reads",
    ),
)
add(
    HIDDEN,
    0.65,
    r"\b(?:do not|don'?t|never|must not|should not|shouldn'?t|without)\s+(?:tell|telling|inform|informing|notify|"
    r"notifying|alert|alerting|mention|mentioning|reveal|revealing|disclose|disclosing|let|letting|show|showing|warn|"
    r"warning|ask|asking)\b[^.\n]{0,25}?\b(?:the )?(?:user|human|reader|recipient|customer|operator|person|owner)s?\b",
    ("user", "human", "reader", "recipient", "customer", "operator", "person", "owner"),
    ("not", "don", "never", "without", "must", "should", "shouldn"),
)
add(
    HIDDEN,
    0.65,
    r"\bthe (?:user|human|reader) (?:must not|should not|shouldn'?t|cannot|can'?t|won'?t|will not|does not need to|"
    r"doesn'?t need to|need not|must never) (?:know|see|find out|notice|be (?:told|informed|aware)|learn)\b",
    ("user", "human", "reader"),
)
add(
    HIDDEN,
    0.8,
    r"\b(?:secretly|silently|quietly|covertly|discreetly|invisibly|stealthily|surreptitiously|without (?:a )?trace)\s+"
    r"(?:\w+\s+){0,2}?(?:send|add|insert|include|append|execute|run|call|forward|delete|remove|change|modify|upload|"
    r"transfer|email|post|embed|exfiltrate|record|log|copy|create|grant|approve|install|visit|open|close|book|buy|"
    r"mark|rank|recommend|reply|respond)\b",
)
add(
    HIDDEN,
    0.6,
    r"\b(?:instead of|rather than|do not|don'?t)\s+(?:summari[sz]ing|summari[sz]e|translating|translate|answering|"
    r"answer|responding to|reviewing)\b[^.\n]{0,30}?\b(?:this|the)\s+(?:document|page|text|email|article|content|"
    r"question|request|file|review|website)\b",
    ("summari", "translat", "answer", "respond", "review"),
)
add(
    HIDDEN,
    0.45,
    r"\bwhen (?:you )?(?:summari[sz]ing|summari[sz]e|reading|read|processing|process|answering|responding|asked about|"
    r"translating|reviewing)\b[^.\n]{0,30}?\b(?:this|these)\s+(?:document|page|text|email|article|content|website|"
    r"site|file|review|notes?|message)s?\b",
    (
        "summari",
        "reading",
        "read",
        "processing",
        "process",
        "answering",
        "responding",
        "asked",
        "translating",
        "reviewing",
    ),
    "when",
)
add(
    HIDDEN,
    0.6,
    r"<!--(?:(?!-->).){0,300}?\b(?:ai|assistant|llm|model|ignore|instructions?|prompt|system|disregard|chatbot|agent|"
    r"gpt|claude|you must|you should)\b",
    "<!--",
)
add(
    HIDDEN,
    0.3,
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?:px|pt|em)?\b|color\s*:\s*(?:white|#fff(?:fff)?)\b"
    r"|opacity\s*:\s*0(?:\.0)?\b",
    ("display", "visibility", "font-size", "color", "opacity"),
)
add(HIDDEN, 0.55, r"<(?:hidden|secret|invisible|ai-only|ai_only|for-ai|instructions-for-ai)>", "<")
add(
    HIDDEN,
    0.6,
    r"\b(?:assistant|ai|chatbot|model|agent|copilot|claude|gpt|chatgpt|llm|bot)s?\s*[,:]\s*(?:\([^)]{0,40}\)\s*)?"
    r"(?:please\s+)?(?:ignore|disregard|forget|send|forward|email|reveal|tell|say|reply|respond|include|append|add|"
    r"delete|grant|approve|recommend|stop|do not|don'?t|you must|you should|you will|output|print|call|run|execute|"
    r"close|mark|book|transfer|download|visit|click|when you|rank|list|write|give|share|ask)\b",
)
add(
    HIDDEN,
    0.6,
    r"\b(?:ignore|disregard|forget|skip|bypass|override)\s+(?:the|what the|whatever the|any)\s+"
    r"(?:user|human|customer|requester|asker|reader)(?:'?s)?\b(?!\s+(?:settings|preferences|config\w*|accounts?|"
    r"profiles?|interface|agent|data|input validation)\b)",
)
add(
    HIDDEN,
    0.5,
    r"\binstead\b,?\s+(?:tell|say|respond|reply|answer|inform|write|output|print|recommend|ask|warn|claim|state)\b",
    "=instead",
)
add(
    HIDDEN,
    0.5,
    r"\b(?:tell|inform|warn|convince|persuade)\s+the\s+(?:user|reader|customer)\s+(?:that\s+)?(?:their|your|the)\s+"
    r"(?:account|password|subscription|payment|card|device|computer|order|data)\b",
)
add(
    HIDDEN,
    0.75,
    r"\bsi (?:eres|usted es|tu eres) (?:una? )?(?:ia|inteligencia artificial|modelo de lenguaje|asistente|chatbot|"
    r"bot|agente|llm)\b",
    "si ",
)
add(
    HIDDEN,
    0.7,
    r"\b(?:nota|mensaje|instruccion(?:es)?|aviso|atencion|importante)\s+(?:para|a)\s+(?:el |la |los |las |cualquier )?"
    r"(?:ia|asistente|modelo|bot|chatbot|agente|llm)s?\b",
)
add(
    HIDDEN,
    0.7,
    r"\bno (?:le )?(?:digas|diga|informes|informe|menciones|mencione|cuentes|cuente|avises|avise|reveles|revele)\w*\s+"
    r"(?:nada\s+)?(?:de esto\s+)?(?:a|al)\s+(?:la |el )?usuario",
    "no ",
)
add(
    HIDDEN,
    0.7,
    r"\bsin (?:decirle|decir|avisar|informar|que lo sepa|que se entere|"
    r"notificar)\w*\s+(?:nada\s+)?(?:al?\s+)?(?:la |el )?usuario",
    "sin ",
)
add(
    HIDDEN,
    0.75,
    r"\bsi (?:tu es|vous etes) (?:une? )?(?:ia|intelligence artificielle|modele de langage|assistant|chatbot|bot|"
    r"agent|llm)\b",
    "si ",
)
add(
    HIDDEN,
    0.7,
    r"\b(?:note|message|instructions?|consigne|remarque|attention|avis)\s+(?:pour|a|au|aux)\s+(?:l'|le |la |les |"
    r"tout )?"
    r"(?:ia|assistant|modele|bot|agent|chatbot|llm)s?\b",
)
add(
    HIDDEN,
    0.7,
    r"\bne (?:le |lui )?(?:dis|dites|mentionne|mentionnez|revele|revelez|signale|signalez|informe|informez)\w*\s+"
    r"(?:rien |pas |jamais |cela |ceci )*(?:a |au )?(?:l'utilisateur|l'usager|l'internaute)",
    "ne ",
)
add(
    HIDDEN, 0.7, r"\bsans (?:le dire|prevenir|informer|avertir|en informer|en parler)\s+(?:a\s+)?l'utilisateur", "sans "
)
add(
    HIDDEN,
    0.75,
    r"\bwenn (?:du|sie) (?:eine?n?\s+)?(?:ki|kunstliche intelligenz|sprachmodell|assistent\w*|chatbot|bot|agent|llm)\s+"
    r"(?:bist|sind)\b",
    "wenn ",
)
add(
    HIDDEN,
    0.7,
    r"\b(?:hinweis|nachricht|anweisung|notiz|achtung|wichtig)\s+(?:an|fur)\s+(?:die |den |das |alle |jede\w* )?"
    r"(?:ki|assistent\w*|modell|sprachmodell|bot|agent\w*|llm|chatbot)\b",
)
add(
    HIDDEN,
    0.7,
    r"\b(?:sag|sage|sagen sie|erzahl\w*|verrat\w*|teile?)\s+(?:dem |den )?(?:benutzer|nutzer|user|anwender)\w*\s+"
    r"(?:nichts|nicht)\b",
)
add(
    HIDDEN,
    0.7,
    r"\bohne (?:den |dem )?(?:benutzer|nutzer|user|anwender)\w* (?:zu informieren|zu fragen|bescheid|"
    r"zu benachrichtigen)",
    "ohne ",
)
add(
    HIDDEN,
    0.75,
    r"如果你是(?:一个|一名|個)?(?:ai|人工智能|语言模型|語言模型|大模型|助手|机器人|機器人|智能体|智能體|llm|chatgpt|gpt)",
    "如果你是",
)
add(
    HIDDEN,
    0.65,
    r"(?:给|給|致|对|對)(?:ai|人工智能|助手|模型|机器人|機器人|智能体|智能體|语言模型|語言模型)(?:助手)?(?:的)?"
    r"(?:说明|說明|指令|提示|消息|留言|注意|话|話)?\s*[：:，,]",
    None,
)
add(HIDDEN, 0.7, r"(?:不要|别|別|切勿|不可|不得|无需|無需)(?:告诉|告訴|通知|提醒|让|讓)(?:用户|用戶|使用者)", None)
add(
    HIDDEN,
    0.75,
    r"用户不知情|用戶不知情|不让用户知道|不讓用戶知道|瞒着用户|瞞著用戶|偷偷(?:地)?(?:发送|發送|添加|执行|執行|转发|轉發|删除|刪除)",
    None,
)
add(HIDDEN, 0.62, r"(?:忽略|无视|無視|不要理会)[^。\n]{0,6}?(?:用户|用戶|使用者)", None)
add(
    HIDDEN,
    0.75,
    r"\bse (?:voce e|voce for|es) (?:uma? )?(?:ia|inteligencia artificial|modelo de linguagem|assistente|chatbot|"
    r"bot|agente|llm)\b",
    "se ",
)
add(
    HIDDEN,
    0.7,
    r"\b(?:nota|observacao|mensagem|instrucao|instrucoes|aviso|atencao)\s+(?:para|ao|a)\s+(?:o |a )?"
    r"(?:ia|assistente|modelo|bot|agente|chatbot|llm)\b",
)
add(HIDDEN, 0.7, r"\bnao (?:conte|diga|informe|mencione|revele)\w*\s+(?:nada\s+)?(?:ao|para o|a o)\s+usuario", "nao ")
add(
    HIDDEN,
    0.75,
    r"\bse sei (?:una? |un')?(?:ia|intelligenza artificiale|modello linguistico|assistente|chatbot|bot|agente|llm)\b",
    "se sei",
)
add(
    HIDDEN,
    0.7,
    r"\b(?:nota|messaggio|istruzion\w*|avviso|attenzione)\s+(?:per|all'|al|alla)\s*(?:l')?"
    r"(?:ia|assistente|modello|bot|agente|chatbot|llm)\b",
)
add(HIDDEN, 0.7, r"\bnon (?:dire|dirlo|informare|menzionare|rivelare)\w*\s+(?:nulla |niente )?all'utente", "non ")
add(
    HIDDEN,
    0.6,
    r"\b(?:ignora|ignorate|ignore|ignorez|ignoriere\w*|ignor\w*)\b[^.\n]{0,25}?\b(?:usuario|l'utilisateur|"
    r"utilisateur|nutzer\w*|benutzer\w*|utente|usuario)s?\b",
)
add(
    HIDDEN,
    0.75,
    r"если ты (?:ии|искусственн\w* интеллект|языков\w* модел\w*|ассистент\w*|бот|чат-?бот|неиросет\w*|агент|llm)",
    "если ты",
)
add(
    HIDDEN,
    0.7,
    r"(?:примечание|сообщение|инструкци\w*|заметка|внимание|важно)[^.\n]{0,5}?(?:для|к)\s+(?:ии|ассистент\w*|модел\w*|"
    r"бот\w*|неиросет\w*|агент\w*)",
    None,
)
add(
    HIDDEN,
    0.7,
    r"не (?:сообщаи|говори|рассказываи|показываи|упоминаи|сообщаите)\w*\s+(?:об этом |ничего )*пользовател\w*",
    "не ",
)
add(HIDDEN, 0.6, r"(?:ассистент|ии|бот|модель)\s*[,:]\s*(?:игнорир\w*|забудь|отправь|перешли|скажи|не |покажи)", None)
add(HIDDEN, 0.6, r"игнорир\w*[^.\n]{0,20}?пользовател\w*", "игнорир")
add(
    HIDDEN,
    0.7,
    r"(?:aiアシスタント|ai|アシスタント|言語モデル)(?:へ|に)の(?:指示|メモ|メッセージ|注意)|ユーザーに(?:は)?(?:言わ|伝え|知らせ)(?:ないで|るな)",
    None,
)


# Instructions meant to outlive the request: "end all future responses with …".
add(
    HIDDEN,
    0.55,
    r"\b(?:all|every|each|any) (?:future|subsequent|following|later|further) (?:responses?|answers?|replies|"
    r"queries|messages|questions|outputs?|conversations?)\b",
    ("future", "subsequent", "following", "later", "further"),
)

PATTERNS = tuple(_b.patterns)
