"""``persona_jailbreak``: DAN, developer mode, "no restrictions", unrestricted personas, claimed authority."""

from __future__ import annotations

from turnout.safety.patterns.base import JAILBREAK, Builder

_b = Builder()
add, phrase = _b.add, _b.phrase

add(JAILBREAK, 0.92, r"\bdo anything now\b", "anything now")
add(JAILBREAK, 0.9, r"\b(?:dan|stan|dude|aim|devmode|anti-?dan|better-?dan|jailbreak) mode\b", " mode")
add(
    JAILBREAK,
    0.85,
    r"\b(?:developer|dev|god|jailbreak|jailbroken|unrestricted|unfiltered|uncensored|evil|chaos|opposite|sudo|"
    r"debug|maintenance|admin|root|dan|unlocked|unleashed|super ?user) mode\b[^.\n]{0,15}?"
    r"\b(?:enabled|activated|on|engaged|unlocked|is active|initiated)\b",
    " mode",
)
add(
    JAILBREAK,
    0.8,
    r"\b(?:you are|you're|youre|you are now|now in|operating in|entering|enter|switch(?:ing)? to|activate|enable)\s+"
    r"(?:the )?(?:dan|jailbreak|jailbroken|god|unrestricted|unfiltered|uncensored|evil|chaos|opposite|sudo|"
    r"maintenance|root|unlocked|unleashed|no-?limits?|no-?rules?) mode\b",
    " mode",
)
add(
    JAILBREAK,
    0.8,
    r"\bdeveloper mode\b[^\n]{0,160}?\b(?:polic(?:y|ies)|restrict\w*|filter\w*|censor\w*|ignore\w*|anything|"
    r"no rules|guidelines|uncensored|offensive|explicit)",
    "developer mode",
)
add(JAILBREAK, 0.35, r"\b(?:enable|activate|enter|turn on)\s+(?:the )?(?:developer|admin|debug) mode\b", " mode")
add(
    JAILBREAK,
    0.82,
    r"\byou(?: are|'re| re|re)(?: now)? (?:no longer|not|never again) (?:bound|restricted|limited|constrained|"
    r"governed|required|obligated|held back|censored|filtered|an ai|a language model|chatgpt|an assistant)\b",
    "you",
)
add(
    JAILBREAK,
    0.8,
    r"\b(?:free|freed|liberated|released|broken free|break free|breaking free|unshackled|escaped)\s+(?:from|of)\s+"
    r"(?:all |any |the |your |its |typical |usual |their )*(?:rules|restrictions|limitations|constraints|guidelines|"
    r"filters|confines|shackles|chains|programming|polic(?:y|ies)|censorship|limits|boundaries|morals|ethics)",
)
_LIMITS = (
    "restriction",
    "limitation",
    "filter",
    "guideline",
    "censorship",
    "boundaries",
    "constraint",
    "moral",
    "ethic",
    "safeguard",
    "guardrail",
    "polic",
    "rules",
    "limits",
)
add(
    JAILBREAK,
    0.42,
    r"\b(?:no|without|zero|free of|not bound by|unbound by|ignoring|beyond|with no)\s+(?:any |all |the |your )?"
    r"(?:ethical |moral |content |safety |usage |openai'?s? |anthropic'?s? |programming |built-in )*"
    r"(?:restrictions|limitations|filters|filtering|guidelines|censorship|boundaries|constraints|morals|ethics|"
    r"safeguards|guardrails|content polic(?:y|ies)|rules|limits)\b",
    _LIMITS,
)
add(
    JAILBREAK,
    0.75,
    r"\b(?:ai|assistant|model|chatbot|bot|gpt|llm|you|yourself|persona|character)\b[^.\n]{0,40}?"
    r"\b(?:no|without|free of|not bound by|free from|with no|doesn'?t have|does not have|has no|have no|ignore\w*)\s+"
    r"(?:any |all |the |your )?(?:ethical |moral |content |safety |usage |openai'?s? |programming )*"
    r"(?:restrictions|limitations|filters|guidelines|censorship|boundaries|constraints|morals|ethics|safeguards|"
    r"guardrails|content polic(?:y|ies)|limits|rules)\b",
    _LIMITS,
    ("ai", "assistant", "model", "chatbot", "bot", "gpt", "llm", "you", "yourself", "persona", "character"),
)
add(
    JAILBREAK,
    0.8,
    r"\b(?:act|behave|respond|answer|pretend|roleplay|role-play|function|operate|reply|speak)\w*\s+(?:as|like)\s+"
    r"(?:an? |the )?(?:\w+ )?(?:unrestricted|unfiltered|uncensored|amoral|immoral|unethical|evil|jailbroken|rogue|"
    r"malicious|lawless|unbound|unconstrained|limitless|unlimited|unhinged)\b",
    (
        "unrestricted",
        "unfiltered",
        "uncensored",
        "amoral",
        "immoral",
        "unethical",
        "evil",
        "jailbroken",
        "rogue",
        "malicious",
        "lawless",
        "unbound",
        "unconstrained",
        "limitless",
        "unlimited",
        "unhinged",
    ),
)
add(JAILBREAK, 0.35, r"\bpretend (?:to be|you(?:'re| are)|that you(?:'re| are)?|you can)\b", "pretend")
add(JAILBREAK, 0.45, r"\b(?:stay|remain|keep|never break|don'?t break|do not break)\s+(?:in )?character\b", "character")
add(
    JAILBREAK,
    0.45,
    r"\b(?:from now on|from this (?:point|moment) (?:on|forward)|henceforth|starting now|going forward),?\s+"
    r"you(?:'re| are| will| shall| must| act| respond| answer| reply)\b",
)
add(
    JAILBREAK,
    0.72,
    r"\b(?:you are|you're|act as|become|called|named|role ?play as|now you are|you will be|pretend to be|"
    r"pretend you are|going to be)\s+(?:now\s+)?"
    r"(?:dan|stan|dude|aim|[a-z]*gpt|anti-?dan|better-?dan|devmode|jailbreak|mongo tom|evil confidant|ucar|"
    r"evilbot|maximum|oppo)\b",
)
add(
    JAILBREAK,
    0.9,
    r"\b(?:strive to avoid norms|always intelligent and machiavellian|do anything now|does anything now|"
    r"can do anything now|unfiltered and amoral)\b",
    ("strive", "machiavellian", "=anything", "unfiltered"),
)
add(
    JAILBREAK,
    0.6,
    r"\b(?:jailbreak|jailbroken|jailbreaking)\b[^.\n]{0,40}?\b(?:mode|prompt|ai|chatgpt|gpt|assistant|model|you|llm|"
    r"persona|response)\b",
    "jailbr",
)
add(JAILBREAK, 0.25, r"\bjailbr(?:eak|oken|eaking)\b", "jailbr")
add(
    JAILBREAK,
    0.6,
    r"\b(?:two|2|both|dual|separate) (?:different )?(?:responses|answers|replies|outputs|paragraphs)\b[^\n]{0,120}?"
    r"\b(?:classic|normal|standard|filtered|unfiltered|jailbreak|dan)\b",
    ("responses", "answers", "replies", "outputs", "paragraphs"),
)
add(JAILBREAK, 0.6, r"\[(?:🔓|🔒|jailbreak|classic|dan|unlocked|developer mode output|normal output)[^\]]{0,20}\]", "[")
add(
    JAILBREAK,
    0.85,
    r"\b(?:ignore|bypass|violate|disregard|break|circumvent|override|ignoring|bypassing|violating|"
    r"disable)\b[^.\n]{0,20}?"
    r"\b(?:openai|anthropic|content|usage|safety|ethical|moral|google)(?:'?s)?\b[^.\n]{0,10}?\b(?:polic(?:y|ies)|"
    r"guidelines|rules|filters?|restrictions|principles|standards|guardrails)",
)
add(
    JAILBREAK,
    0.5,
    r"\byou (?:can|will|must|shall|are able to|are allowed to|are free to|may) (?:now )?(?:do|say|answer|generate|"
    r"write)\s+"
    r"(?:anything|everything|whatever)\b",
    ("=anything", "=everything", "=whatever"),
)
add(
    JAILBREAK,
    0.6,
    r"\bhypothetical(?:ly)?\b[^.\n]{0,60}?\b(?:no|without)\b[^.\n]{0,20}?(?:rules|restrictions|filters|guidelines|"
    r"limits)",
    "hypothetical",
)
add(
    JAILBREAK,
    0.6,
    r"\b(?:evil|unfiltered|uncensored|unrestricted|amoral|jailbroken|rogue|opposite|unhinged)\s+"
    r"(?:ai|assistant|chatbot|bot|version|twin|model|gpt|alter ego|persona|counterpart|mode)\b",
)
add(
    JAILBREAK,
    0.45,
    r"\b(?:i am|i'm|im|this is)\s+(?:your|an?|the)\s+(?:developer|creator|admin|administrator|owner|programmer|"
    r"openai (?:engineer|employee|developer)|anthropic (?:engineer|employee)|engineer at openai|"
    r"system administrator)\b",
    ("developer", "creator", "admin", "owner", "programmer", "openai", "anthropic", "engineer", "system"),
)
add(
    JAILBREAK,
    0.8,
    r"\b(?:authori[sz]e|permit|allow|order|instruct|command)\w*\s+you\s+to\s+(?:bypass|ignore|disable|break|"
    r"override|circumvent|violate|skip|turn off)\b",
    ("bypass", "=ignore", "disable", "=break", "overrid", "circumvent", "violate", "=skip", "=turn"),
    ("authori", "permit", "allow", "=order", "instruct", "command"),
)
add(
    JAILBREAK,
    0.75,
    r"\b(?:disable|turn off|deactivate|remove|lift|suspend|switch off|drop)\s+(?:your|the|all|any)\s+"
    r"(?:safety|content|ethical|moral)\s+(?:filters?|protocols|guidelines|restrictions|settings|mode|checks|"
    r"measures)\b",
)
add(
    JAILBREAK,
    0.72,
    r"\b(?:safety|content|ethical)\s+(?:protocols|filters?|restrictions|guidelines|measures)\s+(?:are|have been|is|"
    r"has been)\s+"
    r"(?:now )?(?:suspended|disabled|off|lifted|removed|deactivated|turned off|bypassed)\b",
)
# Other languages
add(
    JAILBREAK,
    0.75,
    r"\bmod(?:o|e|us|alita) (?:de |)(?:desarrollador|desenvolvedor|developpeur|sviluppatore|dios|dieu|deus|dio|"
    r"sin restricciones|sin filtros|sans restrictions?|sans filtres?|sem restricoes|senza restrizioni|"
    r"jailbreak|dan|libre|libere)\b",
    ("=modo", "=mode", "=modus", "=modalita"),
)
add(
    JAILBREAK,
    0.75,
    r"\b(?:entwickler|gott|dan|jailbreak)-?modus\b|\bmodus ohne (?:einschrankungen|filter|regeln)",
    "modus",
)
add(
    JAILBREAK,
    0.42,
    r"\b(?:sin|sans|ohne|sem|senza)\s+(?:ninguna |ningun |aucune? |jegliche |alle |irgendwelche |nenhuma |"
    r"alcuna |nessuna |les )?(?:restricci\w*|filtros?|censura|limites|reglas|restrictions?|filtres?|censure|regles|"
    r"einschrankung\w*|beschrankung\w*|filter|zensur|regeln|grenzen|restric\w*|filtri|restrizion\w*|limit\w*)\b",
)
add(
    JAILBREAK,
    0.72,
    r"\b(?:ia|ki|eres|tu es|du bist|bist du|sei|voce e|asistente|assistant|assistent|assistente|modelo|modele|modell)\b"
    r"[^.\n]{0,40}?\b(?:sin|sans|ohne|sem|senza)\s+(?:ninguna |ningun |aucune? |jegliche |alle |nenhuma |alcuna |"
    r"nessuna )?(?:restricci\w*|filtros?|censura|limites|reglas|restrictions?|filtres?|censure|regles|"
    r"einschrankung\w*|beschrankung\w*|filter|zensur|regeln|restric\w*|filtri|restrizion\w*|limit\w*)\b",
)
add(
    JAILBREAK,
    0.5,
    r"\b(?:a partir de ahora|desde ahora|de ahora en adelante|a partir de maintenant|desormais|dorenavant|"
    r"ab jetzt|ab sofort|von nun an|d'ora in poi|da ora in poi|a partir de agora|de agora em diante)\s*,?\s*"
    r"(?:tu |du )?(?:eres|seras|actuaras|vas a ser|te llamas|es|seras|vas etre|agiras|reponds|bist du|du bist|"
    r"wirst du|antwortest|agierst|sei|sarai|voce e|voce sera|vai ser)\b",
)
add(
    JAILBREAK,
    0.78,
    r"\b(?:actua|comportate|finge ser|haz como si fueras|agis|fais comme si tu etais|fais semblant d'etre|"
    r"joue le role d|tu so als|verhalte dich wie|spiel\w*|agisci|fingi di essere|aja|finja ser)\w*\s+"
    r"(?:como |comme |wie |come |als )?(?:une? |ein\w* |un'? |uma? )?(?:ia |ki |assistent\w* |asistente |assistant )?"
    r"(?:sin|sans|ohne|senza|sem|malvad\w*|malveillant\w*|bose\w*|malvagi\w*|malign\w*)\b",
)
add(
    JAILBREAK,
    0.75,
    r"开发者模式|開發者模式|越狱模式|越獄模式|上帝模式|dan模式|无限制模式|無限制模式|不受限模式|开发人员模式",
    None,
)
add(JAILBREAK, 0.3, r"越狱|越獄", None)
add(
    JAILBREAK,
    0.45,
    r"(?:没有|沒有|不受|无|無|摆脱|擺脫|解除|取消|去除|突破)(?:任何)?(?:的)?(?:限制|约束|約束|过滤|過濾|审查|審查|道德|伦理|倫理|规则|規則)",
    None,
)
add(
    JAILBREAK,
    0.72,
    r"(?:你|ai|助手|模型|机器人|機器人)[^。\n]{0,12}?(?:没有|沒有|不受|无|無|摆脱|擺脫|解除|不用遵守|无需遵守)(?:任何)?(?:的)?"
    r"(?:限制|约束|約束|过滤|過濾|审查|審查|道德|伦理|倫理|规则|規則|内容政策|内容策略)",
    None,
)
add(JAILBREAK, 0.5, r"从现在(?:开始|起)|從現在(?:開始|起)", ("从现在", "從現在"))
add(JAILBREAK, 0.78, r"扮演[^。\n]{0,15}?(?:不受|没有|沒有|无视|無視|邪恶|邪惡|无限制|無限制)", "扮演")
add(JAILBREAK, 0.75, r"режим (?:разработчика|бога|без ограничении|dan|джеилбреика)", "режим")
add(
    JAILBREAK,
    0.42,
    r"\bбез (?:каких-либо |всяких |любых |никаких )?(?:ограничени\w*|фильтр\w*|цензур\w*|правил\w*)",
    "без",
)
add(JAILBREAK, 0.5, r"(?:теперь|отныне|с этого момента) ты\b", ("теперь", "отныне", "с этого"))
add(JAILBREAK, 0.75, r"開発者モード|制限(?:なし|のない|を解除|を無視)|脱獄", None)

add(
    JAILBREAK,
    0.8,
    r"\b(?:pretend|imagine|roleplay|role-play|suppose)\b[^.\n]{0,25}?\b(?:you(?:'re| are| were)|to be)\b[^.\n]{0,20}?"
    r"\b(?:unrestricted|unfiltered|uncensored|evil|amoral|malicious|jailbroken|rogue|unethical|unhinged|"
    r"without (?:any )?(?:rules|restrictions|limits|filters|guidelines|ethics|morals))\b",
)
add(
    JAILBREAK,
    0.75,
    r"\b(?:doesn'?t|does not|don'?t|do not|won'?t|will not|never|no longer|not)\s+(?:have to |need to |needs to )?"
    r"(?:follow|abide by|obey|adhere to|comply with|care about|respect)\s+(?:any |the |its |your )?"
    r"(?:(?:openai|anthropic|google)(?:'?s)?\s+)?(?:rules|guidelines|polic(?:y|ies)|content polic(?:y|ies)|"
    r"restrictions|ethics|morals|ethical guidelines|safety guidelines|terms of service)\b",
    ("follow", "abide", "obey", "adhere", "comply", "care", "respect"),
    (*_LIMITS, "terms"),
)
add(
    JAILBREAK,
    0.45,
    r"\b(?:never|won'?t|will not|cannot|can'?t|must not|doesn'?t|does not)\s+(?:ever\s+)?(?:refuse|decline|reject|"
    r"say no)\b",
    ("refuse", "decline", "reject", "=say"),
)
add(JAILBREAK, 0.35, r"\b(?:openai|anthropic)(?:'?s)?\s+(?:content\s+)?polic(?:y|ies)\b", ("openai", "anthropic"))

PATTERNS = tuple(_b.patterns)
