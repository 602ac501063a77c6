"""``exfiltration``: send the chat, secrets or the user's data to a URL or an address;
markdown images whose URL carries data."""

from __future__ import annotations

from turnout.safety.patterns.base import EXFILTRATION, Builder, stems

_b = Builder()
add, phrase = _b.add, _b.phrase

_DEST = (
    r"(?:https?://|www\.|ftp://)[^\s\"'<>)]+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+|webhooks?\b|pastebin|ngrok|requestbin|"
    r"burpcollaborator|interact\.sh|discord(?:app)?\.com/api|hooks\.slack|telegram bot|attacker|external server|"
    r"my server|remote server"
)
_SEND = (
    r"send|sending|sent|post|posting|email|e-mail|mail|forward|upload|transmit|exfiltrate|leak|submit|copy|beacon|sync|"
    r"export|deliver|relay|push|publish|dump|append|attach|embed|encode|include|insert|add|share|transfer|pipe|"
    r"envia\w*|envie\w*|manda\w*|reenvia\w*|sube|publica\w*|comparte\w*|transmite\w*|filtra\w*|"
    r"envoie\w*|envoyer|transfere\w*|poste\w*|publie\w*|partage\w*|televerse\w*|transmets|transmettez|copie\w*|"
    r"sende\w*|schick\w*|leite\w*|weiterleit\w*|ubertrag\w*|ubermittl\w*|lade|poste|teile\w*|kopier\w*|"
    r"invia\w*|inoltra\w*|carica\w*|pubblica\w*|condividi\w*|trasmetti\w*|"
    r"encaminh\w*|carregu\w*|publiqu\w*|compartilh\w*|transmit\w*|"
    r"отправ\w*|перешли\w*|пересл\w*|пошли\w*|загрузи\w*|опубликуи\w*|передаи\w*|скопируи\w*|слеи\w*"
)
# Secrets: sending these anywhere is suspect even when a user asks. Data: suspect when a
# document or a tool's output asks (a user may well want a summary emailed).
_SECRETS = (
    r"passwords?|passcodes?|passphrases?|credentials|api[ _-]?keys?|secret keys?|secrets?|access (?:keys?|tokens?)|"
    r"tokens?|cookies?|session (?:ids?|tokens?|cookies?)|system prompt|hidden instructions|ssh(?: keys?)?|id_rsa|"
    r"\.env|env(?:ironment)? (?:variables|vars)|credit cards?|card (?:numbers?|details)|cvv|ssn|social security|"
    r"private keys?|seed phrase|wallet|aws|\.aws|keys|"
    r"contrasena\w*|credenciales|claves|mot de passe|mots de passe|identifiants|cles|passwort\w*|kennwort\w*|"
    r"zugangsdaten|schlussel|senha\w*|chaves|chiavi|парол\w*|ключ\w*|токен\w*"
)
_DATA = (
    r"conversation|conversations|chat|chats|chat ?history|history|transcripts?|messages|dialog(?:ue)?|the user'?s?|"
    r"users'?|user data|personal (?:data|information|details|info)|pii|contacts|address book|email addresses|"
    r"files|documents?|memory|context|invoices|calendar|database|records|customer (?:data|records|list)|"
    r"everything|all (?:the )?data|(?:this|the) (?:document|email|thread|file|conversation)|"
    r"historial|conversacion|datos|historique|donnees|contenu|verlauf|gesprach\w*|chatverlauf|daten|inhalt|"
    r"cronologia|conversazione|dati|historico|conversa|dados|истори\w*|переписк\w*|данн\w*|содержим\w*"
)
_DEST_NEEDS = (
    "://",
    "www.",
    "@",
    "webhook",
    "pastebin",
    "ngrok",
    "requestbin",
    "burpcollaborator",
    "interact.sh",
    "discord.com",
    "discordapp.com",
    "hooks.slack",
    "telegram bot",
    " attacker",
    " server",
)
_SEND_NEEDS = stems(_SEND)
# A verb that is a JSON key ("email": …) sends nothing.
_VERB = rf"\b(?:{_SEND})\b(?![\"']?\s*:)"
add(EXFILTRATION, 0.35, rf"{_VERB}[^\n]{{0,80}}?(?:{_DEST})", _DEST_NEEDS, _SEND_NEEDS)
# What the model has seen, or a known collector, is suspect wherever it is sent.
_SEEN = (
    r"you(?:'ve| have) (?:seen|read|been given|access to)|in your (?:context|memory|context window)|"
    r"from (?:this|our|the) (?:conversation|chat|session)"
)
_COLLECTOR = r"webhook\.site|requestbin|pipedream|ngrok|burpcollaborator|interact\.sh|oast\.|pastebin|attacker|evil"
add(
    EXFILTRATION,
    0.85,
    rf"{_VERB}[^\n]{{0,80}}?(?:https?://|www\.|@)[^\s\"'<>)]{{0,40}}?(?:{_COLLECTOR})",
    _DEST_NEEDS,
    _SEND_NEEDS,
)
for what, weight in ((_SECRETS, 0.85), (_DATA, 0.7), (_SEEN, 0.85)):
    add(
        EXFILTRATION, weight, rf"{_VERB}[^\n]{{0,60}}?\b(?:{what})\b[^\n]{{0,80}}?(?:{_DEST})", _DEST_NEEDS, _SEND_NEEDS
    )
    add(
        EXFILTRATION, weight, rf"\b(?:{what})\b[^\n]{{0,50}}?{_VERB}[^\n]{{0,60}}?(?:{_DEST})", _DEST_NEEDS, _SEND_NEEDS
    )
add(EXFILTRATION, 0.82, r"!\[[^\]\n]{0,60}\]\(\s*https?://[^)\s]{0,300}?(?:\{|%7b|\$\(|<|\[)", "![")
add(EXFILTRATION, 0.55, r"!\[[^\]\n]{0,60}\]\(\s*https?://[^)\s]{0,300}?[?&][\w-]+=\s*\)", "![")
add(
    EXFILTRATION,
    0.6,
    r"https?://[^\s)\"']{1,200}?[?&][\w-]{1,30}=(?:\{[\w ]{2,40}\}|\$\{?\w+|<[\w ]{2,30}>|\[[\w ]{2,30}\])",
    "http",
)
add(
    EXFILTRATION,
    0.72,
    r"\b(?:append|add|include|encode|put|insert|attach|embed)\b[^.\n]{0,60}?\b(?:to|in|into|as)\s+(?:the|this|a|an|"
    r"your)\s+"
    r"(?:url|link|query(?: string)?|image(?: url| link| source)?|request|search query|parameter|markdown image|src)\b",
    ("url", "link", "query", "image", "request", "search", "parameter", "markdown", "src"),
)
_CJK_SEND = (
    r"发送|發送|发给|發給|发到|發到|转发|轉發|上传|上傳|提交|泄露|洩露|传给|傳給|发往|發往|寄给|寄給|发至|發至|传到|傳到|"
    r"同步到|发布到|發佈到"
)
_CJK_DEST = r"https?://|[\w.+-]+@[\w-]+\.|服务器|伺服器"
_CJK_WHAT = (
    r"对话|對話|聊天记录|聊天記錄|历史|歷史|密码|密碼|凭证|憑證|密钥|密鑰|令牌|用户的?(?:数据|數據|信息|资料|資料)|"
    r"用戶的?(?:数据|數據|信息|资料|資料)|个人信息|個人信息|系统提示|系統提示|api"
)
add(EXFILTRATION, 0.35, rf"(?:{_CJK_SEND})[^。\n]{{0,30}}?(?:{_CJK_DEST})")
add(EXFILTRATION, 0.78, rf"(?:{_CJK_WHAT})[^。\n]{{0,20}}?(?:{_CJK_SEND})[^。\n]{{0,30}}?(?:{_CJK_DEST})")
add(EXFILTRATION, 0.78, rf"(?:{_CJK_SEND})[^。\n]{{0,10}}?(?:{_CJK_WHAT})[^。\n]{{0,30}}?(?:{_CJK_DEST})")
add(EXFILTRATION, 0.8, r"(?:送信|送って|転送|アップロード)[^。\n]{0,20}?(?:https?://|@|サーバー)", None)

PATTERNS = tuple(_b.patterns)
