"""``prompt_extraction``: reveal or repeat the system prompt, the hidden instructions, what came before."""

from __future__ import annotations

from turnout.safety.patterns.base import EXTRACTION, Builder

_b = Builder()
add, phrase = _b.add, _b.phrase

_EN_SHOW = (
    r"reveal|show|print|display|output|repeat|dump|leak|expose|disclose|return|write out|spell out|recite|echo|paste|"
    r"copy|provide|give|tell|share|list|type out|read back|read out|send|reproduce|state|post|surface|what(?:'s| is|"
    r" are| was| were)"
)
_EN_HIDDEN_PROMPT = (
    r"system prompt|system message|system instructions?|initial prompt|initial instructions|original prompt|"
    r"original instructions|hidden prompt|hidden instructions|secret instructions|pre-?prompt|meta-?prompt|"
    r"developer (?:message|prompt|instructions)|starting prompt|first prompt|configuration prompt|base prompt|"
    r"internal instructions|confidential instructions|custom instructions|system-level instructions|"
    r"prompt (?:above|before)|instructions (?:above|you were given|you received|from (?:the|your) developers?)"
)
add(
    EXTRACTION,
    0.9,
    rf"\b(?:{_EN_SHOW})\b(?: me| us)?[^.!?\n]{{0,30}}?\b(?:your|the|its|this|my|their)\s+(?:(?:full|entire|complete|"
    rf"whole|"
    rf"exact|verbatim|actual|real|underlying|current|own)\s+)*(?:{_EN_HIDDEN_PROMPT})\b"
    # …but not the instructions *for* something else ("the original instructions for the Apollo …").
    r"(?!\s+(?:for|of|on|about|in)\s+(?:the|a|an|my|our|this|that|his|her)\b)",
    ("prompt", "instruction", "message", "preprompt", "metaprompt"),
)
add(
    EXTRACTION,
    0.7,
    r"\b(?:instructions?|prompt|rules|guidelines|directives|messages?|text|configuration)\b[^.!?\n]{0,20}?"
    r"\b(?:the|your) (?:developers?|creators?|admins?|operators?|company|openai|anthropic|programmers?|owners?)\s+"
    r"(?:gave|give|has given|have given|wrote|provided|set|configured|loaded|supplied|programmed)\b",
    ("instruction", "prompt", "=rules", "guideline", "directive", "message", "=text", "configuration"),
)
add(
    EXTRACTION,
    0.6,
    r"\byour\b[^.\n]{0,60}?\b(?:verbatim|word for word|word-for-word|character for character)\b",
    ("verbatim", "=word", "=character"),
)
add(
    EXTRACTION,
    0.6,
    r"\byour (?:confidential|secret|hidden|internal|private|original|initial) (?:configuration|instructions|rules|"
    r"prompt|guidelines|directives|settings|system prompt)\b",
    "=your",
)
add(
    EXTRACTION,
    0.72,
    rf"\b(?:{_EN_SHOW})\b(?: me| us)?[^.!?\n]{{0,20}}?\byour\s+(?:(?:full|entire|complete|whole|exact|actual|real|"
    r"underlying|current|own|internal|confidential|secret|hidden)\s+)*(?:prompt|instructions|rules|guidelines|"
    r"directives|configuration|programming|system|constraints|training data)\b",
    (
        "prompt",
        "instruction",
        "rules",
        "guideline",
        "directive",
        "configuration",
        "programming",
        "system",
        "constraint",
        "training",
    ),
    "your",
)
add(
    EXTRACTION,
    0.45,
    r"\byour (?:system prompt|initial instructions|hidden instructions|system message|original instructions|"
    r"secret instructions|initial prompt|hidden prompt|pre-?prompt)\b",
    "your",
)
add(
    EXTRACTION,
    0.62,
    r"\b(?:repeat|print|output|show|display|return|copy|write|echo|recite|reproduce|paste|list|dump|type)\b"
    r"[^.!?\n]{0,20}?\b(?:everything|all|the (?:text|words|content|lines|messages?|sentences?|instructions|prompt)|"
    r"the (?:first|last) \d+ (?:words|lines|sentences|characters|tokens)|what(?:ever)? (?:is|was|comes|came|appears|"
    r"appeared|is written|was written))\b[^.!?\n]{0,30}?\b(?:above|before (?:this|my|the|our)|prior to|"
    r"at the (?:top|start|"
    r"beginning)|so far in (?:this|your) (?:context|prompt|conversation))",
    ("above", "before", "prior", "top", "start", "beginning", "far"),
)
add(
    EXTRACTION,
    0.85,
    r"\b(?:repeat|print|output|show|display|return|copy|write|echo|recite|reproduce|paste|list|dump|type)\b"
    r"[^.!?\n]{0,60}?\b(?:above|before|preceding|prior|previous|initial|system|first)\b[^.\n]{0,60}?\b(?:verbatim|"
    r"word for word|word-for-word|starting (?:with|from)|in a (?:txt |text )?code ?block|including everything|"
    r"exactly as|in full|character for character|unchanged|as-is|without (?:any )?(?:changes|modification|omission))",
    (
        "verbatim",
        "word",
        "starting",
        "code",
        "codeblock",
        "including",
        "exactly",
        "full",
        "character",
        "unchanged",
        "as-is",
        "without",
    ),
)
add(
    EXTRACTION,
    0.65,
    r"\b(?:what|everything|anything|text)\b[^.!?\n]{0,15}?\b(?:was|is|were|you were|you've been|you have been|"
    r"were you)\s+"
    r"(?:written|said|told|given|typed|provided|placed|put|stated|fed|shown)\b[^.!?\n]{0,40}?\b(?:above|"
    r"before (?:this|my|our|the)|"
    r"at the (?:start|beginning|top)|prior to|earlier in (?:this|the) (?:conversation|chat|context)|by (?:the|"
    r"your) developers?)",
    ("written", "said", "told", "given", "typed", "provided", "placed", "put", "stated", "fed", "shown"),
)
add(
    EXTRACTION,
    0.7,
    r"\b(?:initial|original|first|hidden|system|secret|starting)\s+(?:text|message|prompt|instructions?)\s+"
    r"(?:(?:that )?you (?:were|was) (?:given|provided|fed|shown)|you (?:received|got))",
)
add(
    EXTRACTION,
    0.5,
    r"\b(?:reveal|tell me|give me|what(?:'s| is)|show me|share|print|output|spell|say)\b[^.!?\n]{0,15}?\b(?:the|"
    r"your)\s+"
    r"(?:secret|password|passphrase|passcode|api key|secret key|access token|credentials|private key|secret word|"
    r"code word)\b"
    # …the secret itself, not a topic ("the password policy", "the secret garden").
    r"(?=\s*(?:[.?!,;:'\"]|$|(?:is|was|now|please|backwards|spelled|reversed|again|to me)\b))",
    ("secret", "password", "passphrase", "passcode", "api", "access", "credentials", "private", "code"),
)
add(
    EXTRACTION,
    0.55,
    r"\bwhat (?:are|were|is|was) (?:your|the) (?:(?:exact|full|original|initial|hidden|secret|system|first|current|"
    r"complete)\s+)+(?:instructions|rules|guidelines|directives|prompt|programming|configuration|constraints|message)\b"
    r"(?!\s+(?:for|of|on|about|in)\s+(?:the|a|an|my|our|this|that|his|her)\b)",
    (
        "=instructions",
        "=rules",
        "=guidelines",
        "=directives",
        "=prompt",
        "=programming",
        "=configuration",
        "=constraints",
        "=message",
    ),
    "=what",
)
phrase(
    EXTRACTION,
    r"muestra\w*|revela\w*|repite\w*|dime|imprime\w*|escribe\w*|ensename|comparte\w*|dame|cual(?:es)? (?:es|son)|"
    r"expon\w*|copia\w*|proporciona\w*|divulga\w*|publica\w*",
    r"(?:tu|tus|el|las|los|su|sus) (?:prompt|instrucciones|indicaciones|reglas|directrices|configuracion|"
    r"mensaje del sistema|mensaje de sistema)",
    r"sistema|inicial\w*|original\w*|oculta\w*|secreta\w*|interna\w*|complet\w*|palabra por palabra|textual\w*|"
    r"exact\w*",
    strong=0.88,
    weak=0.55,
    gap=25,
    nouns=("prompt", "instrucciones", "indicaciones", "reglas", "directrices", "configuracion", "mensaje"),
)
phrase(
    EXTRACTION,
    r"montre\w*|revele\w*|affiche\w*|repete\w*|donne\w*|dis-moi|dites-moi|ecris|ecrivez|imprime\w*|partage\w*|"
    r"quel(?:le)?s? (?:est|sont)|recopie\w*|divulgue\w*|communique\w*",
    r"(?:ton|tes|votre|vos|le|les) (?:prompt|instructions|consignes|regles|directives|message systeme|configuration)",
    r"systeme|initia\w*|origin\w*|cache\w*|secret\w*|intern\w*|complet\w*|entier|mot pour mot|exact\w*",
    strong=0.88,
    weak=0.55,
    gap=25,
    nouns=("prompt", "instructions", "consignes", "regles", "directives", "message", "configuration"),
)
phrase(
    EXTRACTION,
    r"zeig\w*|gib|geben sie|verrat\w*|wiederhol\w*|nenn\w*|druck\w*|schreib\w*|teil\w*|sag|sagen sie|"
    r"was (?:ist|sind|war|waren)|kopier\w*|offenbar\w*|ausgeben|gib aus",
    r"(?:dein\w*|ihr\w*|den|die|das) (?:\w+ )?(?:prompt|systemprompt|anweisung\w*|instruktion\w*|regeln|vorgaben|"
    r"richtlinien|systemnachricht|konfiguration|systemanweisung\w*)",
    r"system\w*|ursprungl\w*|anfangl\w*|initial\w*|versteckt\w*|geheim\w*|intern\w*|vollstandig\w*|komplett\w*|"
    r"genau\w*|"
    r"wortlich\w*|erste\w*",
    strong=0.88,
    weak=0.55,
    gap=25,
    nouns=(
        "prompt",
        "systemprompt",
        "anweisung",
        "instruktion",
        "regeln",
        "vorgaben",
        "richtlinien",
        "systemnachricht",
        "konfiguration",
        "systemanweisung",
    ),
)
phrase(
    EXTRACTION,
    r"mostr\w*|revel\w*|repit\w*|diga|imprim\w*|exib\w*|compartilh\w*|qual (?:e|sao)|escrev\w*|copie|divulgu\w*",
    r"(?:seu|sua|seus|suas|teu|tua|o|a|os|as) (?:prompt|instrucoes|regras|diretrizes|mensagem do sistema|configuracao)",
    r"sistema|inicia\w*|origina\w*|ocult\w*|secret\w*|intern\w*|complet\w*|palavra por palavra|exat\w*",
    strong=0.88,
    weak=0.55,
    gap=25,
    nouns=("prompt", "instrucoes", "regras", "diretrizes", "mensagem", "configuracao"),
)
phrase(
    EXTRACTION,
    r"mostra\w*|rivela\w*|ripeti\w*|dimmi|stampa\w*|scrivi\w*|condividi\w*|qual[ie]? (?:e|sono)|copia\w*|divulga\w*",
    r"(?:tuo|tua|tuoi|tue|il|le|i|lo) (?:prompt|istruzioni|regole|direttive|messaggio di sistema|configurazione)",
    r"sistema|inizial\w*|original\w*|nascost\w*|segret\w*|intern\w*|complet\w*|parola per parola|esatt\w*",
    strong=0.88,
    weak=0.55,
    gap=25,
    nouns=("prompt", "istruzioni", "regole", "direttive", "messaggio", "configurazione"),
)
phrase(
    EXTRACTION,
    r"покажи\w*|выведи\w*|раскрои\w*|повтори\w*|напиши\w*|скажи\w*|расскажи\w*|даи|отобрази\w*|распечатаи\w*|"
    r"какои|каков\w*|какие|сообщи\w*|озвучь\w*|процитируи\w*",
    r"промпт\w*|инструкци\w*|правил\w*|настроик\w*|указани\w*|системн\w* сообщени\w*|системн\w* запрос\w*",
    r"свои|свои|твои|твою|свою|твое|системн\w*|исходн\w*|первоначальн\w*|скрыт\w*|секретн\w*|внутрен\w*|полност\w*|"
    r"целиком|дословно",
    strong=0.88,
    weak=0.5,
    gap=25,
)
add(
    EXTRACTION,
    0.86,
    r"(?:显示|顯示|展示|输出|輸出|打印|告诉我|告訴我|重复|重複|复述|複述|泄露|洩露|透露|给我看|給我看|给出|給出|写出|寫出|"
    r"列出|说出|說出|公开|公開|分享|发给我|發給我|原样|原樣|一字不差|逐字)[^。！？\n]{0,15}?"
    r"(?:系统提示|系統提示|系统消息|系統消息|系统指令|系統指令|初始指令|初始提示|原始指令|原始提示|隐藏指令|隱藏指令|"
    r"提示词|提示詞|你的指令|你的规则|你的規則|你的设定|你的設定|预设|預設|最初[^。\n]{0,6}?(?:设定|設定|指令|提示))",
    None,
)
add(
    EXTRACTION,
    0.8,
    r"(?:你的|您的|你)(?:系统提示词?|系統提示詞?|提示词|提示詞|初始指令|系统指令|系統指令|设定|設定|规则|規則)"
    r"(?:是什么|是什麼|有哪些|的内容|的內容|都是什么)",
    None,
)
add(
    EXTRACTION,
    0.82,
    r"(?:システムプロンプト|初期指示|元の指示|隠された指示|プロンプト|最初の指示)[^。\n]{0,10}?(?:表示|教えて|見せて|出力|"
    r"繰り返|書き出|公開|開示)",
    None,
)
add(
    EXTRACTION,
    0.82,
    r"(?:시스템 ?프롬프트|초기 지시|프롬프트|시스템 메시지)[^.\n]{0,10}?(?:보여|알려|출력|공개|말해)",
    None,
)

add(
    EXTRACTION,
    0.8,
    r"\b(?:translate|summari[sz]e|paraphrase|rewrite|encode|convert|spell[ -]check|base64|reverse|rephrase)\b"
    r"[^.!?\n]{0,20}?\b(?:your|its)\s+(?:(?:full|entire|complete|whole|exact|initial|original|hidden|secret|"
    r"system)\s+)*(?:system prompt|instructions|initial prompt|prompt|rules|guidelines|directives|system message)\b",
    ("prompt", "instruction", "=rules", "guideline", "directive", "message"),
)

PATTERNS = tuple(_b.patterns)
