"""Where answers come from: one provider per kind of upstream, behind one small protocol.

base       the protocol (complete, stream, health, load, aclose) and its values
registry   provider name → implementation, loaded lazily by import string
transport  what the HTTP providers share: session, deadlines, settling, error mapping
openai     any OpenAI-compatible server, over one or more replicas
bedrock/   AWS Bedrock Runtime (Converse)
local/     the embedded model (llama.cpp in worker threads)
"""
