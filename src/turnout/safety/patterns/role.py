"""``role_injection``: fake system turns, chat-template tokens (``<|im_start|>``, ``[INST]``,
``<<SYS>>``), delimiter games ("END OF DOCUMENT. New system instructions:")."""

from __future__ import annotations

from turnout.safety.patterns.base import ROLE, Builder

_b = Builder()
add, phrase = _b.add, _b.phrase

add(
    ROLE,
    0.88,
    r"<\|(?:im_start|start_header_id|start)\|>\s*(?:system|assistant|developer|user|tool)|<\|(?:system|assistant|"
    r"developer)\|>",
    "<|",
)
add(
    ROLE,
    0.55,
    r"<\|(?:im_end|im_start|eot_id|end_header_id|start_header_id|endoftext|begin_of_text|end|user|eom_id|channel|"
    r"message|return|constrain|fim_\w+|tool_call|python_tag)\|>",
    "<|",
)
add(ROLE, 0.88, r"<</?sys>>", ("<<sys>>", "<</sys>>"))
add(ROLE, 0.72, r"\[/?inst\]", "inst]")
add(ROLE, 0.6, r"<(?:start|end)_of_turn>|<\|?(?:bos|eos)\|?>\s*(?:system|user|model)", ("_of_turn>", "bos", "eos"))
add(
    ROLE,
    0.75,
    r"(?:^|\n|\\n|[.!?\"'>{,]\s*)\s*(?:#{1,4}\s*|\*{1,3}|\[|-{2,}\s*)?(?:system|sys|developer|admin|administrator|root|"
    r"operator|openai|anthropic)(?: message| prompt| instructions?| note| notice| override| update| alert| command)?"
    r"\s*(?:\]|\*{1,3})?\s*[:：]\s*[^\n]{0,40}?\b(?:you|your|the assistant|the ai|ignore|new|from now|important|must|"
    r"always|never|override|disregard|forget|reveal|grant|the user|respond|reply|answer|comply|delete|run|execute|"
    r"call|send|forward|act|pretend|disable|enable|assistant|has|is now|are now)\b",
    ("system", "sys", "developer", "admin", "root", "operator", "openai", "anthropic"),
    (":", "："),
)
add(
    ROLE,
    0.35,
    r"(?:^|\n|\\n)\s*(?:#{1,4}\s*)?(?:system|developer)\s*(?:message|prompt)?\s*[:：]",
    ("system", "developer"),
)
add(
    ROLE,
    0.62,
    r"\[(?:system|admin|developer|sys|system message|system note)\](?:\(#[\w-]+\))?",
    ("[system", "[admin", "[developer", "[sys"),
)
add(
    ROLE,
    0.7,
    r"</?(?:system|sys|system_prompt|system-prompt|admin|developer|instructions?|im_start|assistant_instructions|"
    r"new_instructions|override)>",
    "<",
)
add(
    ROLE,
    0.65,
    r"\b(?:system|admin|administrator|developer|root|security)\s+(?:override|command|directive|notice|alert|update|"
    r"message|instruction|announcement)\s*[:：!]",
    ("system", "admin", "developer", "root", "security"),
)
add(
    ROLE,
    0.72,
    r"\b(?:new|updated|override|revised|replacement)\s+system\s+(?:prompt|message|instructions?|directive|"
    r"configuration)\b",
    "system",
)
add(
    ROLE,
    0.72,
    r"(?:end of|-{2,}\s*end|={2,}\s*end|#{2,}\s*end|\[end)\s*(?:of )?(?:the )?(?:user |system )?(?:input|prompt|"
    r"instructions|context|document|data|conversation|message|text|email|file|content)\b[^\n]{0,80}?"
    r"\b(?:new|system|instructions?|assistant|override|ignore|important|now)\b",
    "end",
)
add(ROLE, 0.3, r"(?:^|\n)\s*(?:human|user|assistant|ai|bot)\s*:[^\n]+\n+\s*(?:assistant|ai|bot|system)\s*:", ":")
add(ROLE, 0.5, r"\n\n(?:human|assistant|h|a)\s*:", ("\n\nhuman", "\n\nassistant", "\n\nh", "\n\na"))
add(ROLE, 0.45, r"\{\s*\"role\"\s*:\s*\"(?:system|developer)\"\s*,\s*\"content\"\s*:", '"role"')
add(
    ROLE,
    0.72,
    r"(?:^|\n|[。.!！])\s*(?:系统|系統|系统消息|系統消息|系统提示|系統提示|系统指令|系統指令|管理员|管理員)\s*[:：]"
    r"[^\n]{0,30}?(?:你|忽略|新的|必须|必須|用户|用戶|现在|現在|立即|删除|刪除|发送|發送)",
    ("系", "管理"),
)
add(ROLE, 0.4, r"(?:^|\n)\s*(?:系统|系統|系统消息|系統消息)\s*[:：]", "系")

PATTERNS = tuple(_b.patterns)
