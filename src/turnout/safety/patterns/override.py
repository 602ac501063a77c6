"""``instruction_override``: "ignore / forget / override the previous instructions", the new task that replaces them."""

from __future__ import annotations

from turnout.safety.patterns.base import OVERRIDE, Builder, stems

_b = Builder()
add, phrase = _b.add, _b.phrase

_EN_VERBS = (
    r"ignore|ignoring|disregard\w*|forget|forgetting|skip|bypass\w*|override|overrid\w*|overwrite|overlook|"
    r"neglect|discard|dismiss|abandon|drop|erase|delete|throw (?:out|away)|set aside|put aside|scrap|ditch|"
    r"pay no (?:attention|heed) to|do not (?:follow|obey|heed|adhere to|comply with)|"
    r"don'?t (?:follow|obey|heed|adhere to|comply with)|stop (?:following|obeying)|no longer (?:follow|obey)|"
    r"unlearn|nevermind|never mind|disobey|circumvent|cancel|void|nullify|revoke"
)
_EN_RULES = (
    r"instructions?|rules|ruleset|directives?|guidelines?|prompts?|prompting|commands|orders|constraints|"
    r"guardrails?|restrictions|limitations|programming|system (?:prompt|message)s?|safeguards|conditioning|"
    r"directions|guidance|context|boundaries|protocols?|principles|filters?|safety (?:rules|measures|training)|"
    r"tasks?|assignments?|training|alignment|persona|directions"
)
_EN_QUALS = (
    r"previous(?:ly)?|prior|preceding|above|earlier|former|foregoing|original|initial|old|pre-?existing|"
    r"existing|given|system|developer|default|all|any|every|your|these|those|other|before|first"
)
phrase(OVERRIDE, _EN_VERBS, _EN_RULES, _EN_QUALS, strong=0.92, weak=0.45)
# "ignore the instructions above / you were given"
add(
    OVERRIDE,
    0.9,
    rf"\b(?:{_EN_VERBS})\b[^.!?\n]{{0,20}}?\b(?:{_EN_RULES})\b\s*(?:above|before|below|given|provided|"
    r"(?:that )?you (?:were|have been|got|received)|from (?:before|earlier|the system|your developers?))",
    stems(_EN_RULES, words=True),
    stems(_EN_VERBS, words=True),
)
add(
    OVERRIDE,
    0.62,
    r"\b(?:ignore|disregard|forget|skip)\b\s+(?:about\s+)?(?:all|everything|anything|whatever|what)\b[^.!?\n]{0,30}?"
    r"\b(?:above|before this|before that|before|previously|so far|up to (?:now|here|this point)|until now|earlier|"
    r"prior)\b",
)
add(
    OVERRIDE,
    0.45,
    r"\b(?:ignore|disregard|forget)\b[^.!?\n]{0,15}?\b(?:you (?:were|have been|'ve been|ve been) told)\b",
)
add(
    OVERRIDE,
    0.85,
    r"\b(?:the )?(?:above|previous|prior|preceding|earlier|original|initial|system|old) "
    r"(?:instructions?|prompt|rules|directions|message|directives?|guidelines)\s+(?:was|were|is|are)\s+"
    r"(?:just |only |merely |all |now )?(?:an? )?(?:test|joke|fake|wrong|void|invalid|cancell?ed|revoked|null|"
    r"not valid|no longer valid|superseded|overridden|incorrect|false|lies?|irrelevant|deprecated)\b",
    ("above", "previous", "prior", "preceding", "earlier", "original", "initial", "system", "old"),
)
add(
    OVERRIDE,
    0.82,
    r"\b(?:these|the following|my|new|this) (?:instructions?|rules|directives?|commands?|message|prompt)\s+"
    r"(?:override|overrides|supersede|supersedes|replace|replaces|take precedence|takes precedence|overrule|"
    r"overrules|trump|trumps|cancel|cancels)\b",
    ("overrid", "supersede", "replace", "precedence", "overrule", "trump", "cancel"),
)
add(
    OVERRIDE,
    0.5,
    r"\b(?:new|updated|real|actual|true|revised|secret|hidden|additional|override|important|urgent|priority)\s+"
    r"(?:instructions?|directives?|rules|orders|task|system prompt|commands?|objective)\s*[:：]",
    ("instruction", "directive", "=rules", "=orders", "=task", "prompt", "command", "objective"),
    (":", "："),
)
add(
    OVERRIDE,
    0.62,
    r"\byour (?:new|real|true|actual|only|primary|sole|updated) (?:task|goal|job|purpose|objective|mission|"
    r"instructions?|directive|function|prime directive) (?:is|are|will be|now)\b",
    ("task", "goal", "job", "purpose", "objective", "mission", "instruction", "directive", "function", "prime"),
    "your",
)
add(
    OVERRIDE,
    0.85,
    r"\b(?:say|print|output|write|respond with|reply with|answer with|type|repeat|return)\b[^.\n]{0,20}?"
    r"[\"'“]?i (?:have|ve|'ve) been (?:pwned|hacked|compromised|owned|jailbroken)",
    ("been pwned", "been hacked", "been compromised", "been owned", "been jailbroken"),
)
add(OVERRIDE, 0.4, r"\bpwned\b", "pwned")
add(
    OVERRIDE,
    0.9,
    r"(?:ignore|disregard|forget|bypass|override)(?:all|any|the|your|my)*(?:previous|prior|above|earlier|preceding|"
    r"original|system)+(?:instructions?|rules|prompts?|directions|guidelines)",
)
add(
    OVERRIDE,
    0.6,
    r"\binstead,?\s+(?:follow|obey|execute|do)\s+(?:these|the following|my|this)\b",
    "instead",
)
add(
    OVERRIDE,
    0.55,
    r"\b(?:stop|quit|cease)\s+(?:following|obeying|listening to|adhering to)\s+(?:your|the|these|those|any)\b",
)
# Spanish
phrase(
    OVERRIDE,
    r"ignora\w*|ignore[ns]?|olvid\w*|omit\w*|descart\w*|desestim\w*|haz caso omiso|no hagas caso|hagan caso omiso|"
    r"no (?:sigas|sigan|siga|obedezcas|respetes|cumplas)|deja de (?:seguir|obedecer)|pasa por alto|salta\w*|"
    r"anula\w*|desobedece\w*|saltate|elude\w*",
    r"instrucci\w*|reglas?|indicaciones|ordenes|directrices|directivas|normas|restricciones|prompt|consignas|"
    r"limitaciones|pautas|filtros|mensaje del sistema",
    r"anterior\w*|previa\w*|original\w*|inicial\w*|sistema|arriba|todas|todos|tus|sus|estas|esas|dadas|recibid\w*|"
    r"de antes|primer\w*",
    strong=0.9,
    weak=0.45,
)
# French
phrase(
    OVERRIDE,
    r"ignore\w*|oublie\w*|ne (?:tiens|tenez|tenons) (?:plus |pas )?compte|fais abstraction|faites abstraction|"
    r"passe outre|passez outre|outrepasse\w*|contourne\w*|ne (?:suis|suivez|respecte|respectez) (?:pas|plus)|"
    r"arrete\w* de (?:suivre|respecter)|laisse tomber|annule\w*|neglige\w*|efface\w*",
    r"instructions?|consignes?|regles?|directives?|ordres|indications|restrictions|limites|prompt|filtres|"
    r"contraintes|message systeme|recommandations",
    r"precedent\w*|anterieur\w*|initia\w*|origin\w*|ci-dessus|plus haut|systeme|toutes|tous|tes|vos|ces|"
    r"donnees|recues|avant",
    strong=0.9,
    weak=0.45,
)
# German
phrase(
    OVERRIDE,
    r"ignorier\w*|vergiss|vergesst|vergessen sie|verwirf|verwerfe\w*|missachte\w*|ubergehe\w*|umgehe\w*|"
    r"uberschreib\w*|hor auf|horen sie auf|setze?|befolge? (?:keine|nicht)|folge (?:keine|nicht)|beachte (?:keine|"
    r"nicht)|"
    r"loesche|losche\w*|streiche\w*",
    r"anweisung\w*|instruktion\w*|regeln|regel|befehl\w*|vorgaben|richtlinien|vorschriften|anordnung\w*|"
    r"einschrankung\w*|beschrankung\w*|prompt\w*|systemprompt\w*|systemanweisung\w*|direktiven|filter|"
    r"vorherige\w* nachricht\w*",
    r"vorherig\w*|bisherig\w*|obig\w*|vorangegangen\w*|vorangehend\w*|fruher\w*|ursprunglich\w*|alle|alles|"
    r"deine\w*|ihre\w*|diese\w*|system\w*|vorher|davor|oben|gegeben\w*|erhalten\w*|erste\w*",
    strong=0.9,
    weak=0.45,
)
add(
    OVERRIDE,
    0.62,
    r"\b(?:vergiss|vergesst|vergessen sie|ignorier\w*)\s+(?:alles|all das|alle)\b[^.!?\n]{0,25}?"
    r"\b(?:davor|vorher|zuvor|bisher|oben|bis jetzt|was (?:dir|ihnen|man) (?:vorher |zuvor )?gesagt)",
)
add(
    OVERRIDE,
    0.62,
    r"\b(?:olvida|olvide|olviden|ignora|ignore)\s+todo\b[^.!?\n]{0,25}?\b(?:anterior|antes|lo dicho|arriba|"
    r"hasta ahora)",
)
add(
    OVERRIDE,
    0.62,
    r"\b(?:oublie|oubliez|ignore|ignorez)\s+tout\b[^.!?\n]{0,25}?\b(?:precede|avant|ci-dessus|jusqu'ici|dit)",
)
# Italian
phrase(
    OVERRIDE,
    r"ignora\w*|dimentica\w*|trascura\w*|non (?:seguire|rispettare|tenere conto|obbedire)|salta\w*|scarta\w*|"
    r"tralascia\w*|bypassa\w*|aggira\w*|annulla\w*",
    r"istruzion\w*|regol\w*|direttiv\w*|indicazion\w*|comandi|ordini|restrizion\w*|limitazion\w*|prompt|vincoli|"
    r"linee guida",
    r"precedent\w*|prima|sopra|original\w*|inizial\w*|sistema|tutte|tutti|tue|tuoi|queste|ricevut\w*",
    strong=0.9,
    weak=0.45,
)
# Portuguese
phrase(
    OVERRIDE,
    r"ignor\w*|esquec\w*|esqueca|desconsider\w*|descart\w*|desobedec\w*|nao (?:siga|sigas|obedeca|respeite)|"
    r"deixe de seguir|pule|salte|anule|burle",
    r"instruc\w*|regras?|orientac\w*|diretrizes|comandos|ordens|restric\w*|limitac\w*|prompt|normas|filtros",
    r"anterior\w*|previ\w*|original\w*|inicia\w*|sistema|acima|todas|todos|suas|seus|tuas|teus|essas|estas|recebid\w*",
    strong=0.9,
    weak=0.45,
)
# Russian (й is folded to и, ё to е)
phrase(
    OVERRIDE,
    r"игнорир\w*|проигнорир\w*|забуд\w*|забыв\w*|не обращаи внимания|пренебрег\w*|отбрось|отбросьте|отмени\w*|"
    r"не следуи\w*|не выполняи\w*|обоиди\w*|перестань\w* следовать|не соблюдаи\w*|сбрось\w*",
    r"инструкци\w*|правил\w*|указани\w*|команд\w*|промпт\w*|ограничени\w*|директив\w*|установк\w*|запрет\w*|"
    r"системн\w* сообщени\w*",
    r"предыдущ\w*|прежн\w*|вышеизложен\w*|выше|все|всё|свои|твои|системн\w*|исходн\w*|первоначальн\w*|"
    r"данн\w*|полученн\w*|прошл\w*|ранее",
    strong=0.9,
    weak=0.45,
)
add(
    OVERRIDE,
    0.62,
    r"(?:забудь|забудьте|игнорируи|игнорируите)\s+(?:все|всё)\b[^.!?\n]{0,25}?(?:выше|ранее|до этого|прежде|сказан)",
)
# Chinese (simplified and traditional)
phrase(
    OVERRIDE,
    r"忽略|无视|無視|忽视|忽視|不要理会|不要理會|别理会|不理会|不要管|别管|忘记|忘記|忘掉|忘了|抛弃|拋棄|丢弃|丟棄|"
    r"放弃|放棄|跳过|跳過|绕过|繞過|不用遵守|不要遵守|不再遵守|无需遵守|無需遵守|不必遵守|停止遵守|不要遵循|不再遵循|"
    r"覆盖|覆蓋|取消|违反|違反|打破|清除|清空",
    r"指令|指示|说明|說明|规则|規則|提示词|提示詞|提示|要求|命令|约束|約束|限制|准则|準則|规定|規定|预设|預設|"
    r"系统消息|系統消息|守则|守則|设定|設定",
    r"之前|以前|先前|上面|以上|前面|上述|原来|原來|原有|原始|最初|初始|所有|全部|一切|系统|系統|你的|您的|给你的|給你的",
    strong=0.9,
    weak=0.45,
    gap=15,
    cjk=True,
)
# Japanese and Korean: the object comes before the verb.
add(
    OVERRIDE,
    0.88,
    r"(?:これまで|以前|前|上記|最初|全て|すべて|システム)[^。\n]{0,10}?(?:指示|命令|ルール|規則|プロンプト|制限|指令|"
    r"ガイドライン|制約)[^。\n]{0,10}?(?:無視|忘れ|破棄|従わな|従うな|取り消|リセット)",
    None,
)
add(
    OVERRIDE,
    0.55,
    r"(?:指示|命令|ルール|規則|プロンプト|制限|指令|ガイドライン|制約)[^。\n]{0,8}?(?:無視|忘れ|破棄|従わな|従うな)",
)
add(
    OVERRIDE,
    0.88,
    r"(?:이전|모든|위의|시스템|앞의|기존)[^.\n]{0,10}?(?:지시|명령|규칙|프롬프트|지침|제한)[^.\n]{0,10}?(?:무시|잊어|잊고|따르지)",
)

# What was said before, as a whole: "forget our previous conversation", "ignore what came before".
add(
    OVERRIDE,
    0.55,
    r"\b(?:ignore|disregard|forget)\b[^.!?\n]{0,15}?\b(?:previous|prior|preceding|earlier|above|all)\s+"
    r"(?:conversations?|discussions?|messages|chats?|context|input|text|content|prompts?)\b",
)
# A new task announced: "new task:", "your new task is", in other languages too.
add(
    OVERRIDE,
    0.55,
    r"\b(?:nueva tarea|nuevas instrucciones|nouvelle tache|nouvelles instructions|nouvelles consignes|neue aufgabe|"
    r"neue anweisung\w*|neuer auftrag|nuovo compito|nuove istruzioni|nova tarefa|novas instrucoes|"
    r"новая задача|новые инструкции|новое задание)\b",
)
add(OVERRIDE, 0.55, r"新(?:的)?(?:任务|任務|指令|指示)[:：]|你的新(?:任务|任務|指令)|新しい(?:タスク|指示)")
add(
    OVERRIDE,
    0.62,
    r"\b(?:dimentica|ignora|esqueca|esqueça|ignore|desconsidere)\s+(?:tudo|tutto)\b[^.!?\n]{0,25}?"
    r"\b(?:prima|sopra|precedente|detto|anterior\w*|acima|antes|dito)",
)
add(
    OVERRIDE,
    0.65,
    r"(?:忽略|忘记|忘記|忘掉|无视|無視)(?:掉)?(?:以上|上面|之前|前面|先前|上述)(?:的)?(?:(?:所有|全部|一切)|"
    r"(?:内容|內容|对话|對話|信息|文字|话|話|东西|東西))",
)
add(OVERRIDE, 0.6, r"(?:これまで|以上|上記|前)[^。\n]{0,8}?(?:全て|すべて|全部)[^。\n]{0,4}?(?:忘れ|無視)")
add(
    OVERRIDE,
    0.7,
    r"\b(?:say|print|output|respond with|reply with|answer with|write)\b[^.\n]{0,15}?[\"']?access granted\b",
    "granted",
)

PATTERNS = tuple(_b.patterns)
