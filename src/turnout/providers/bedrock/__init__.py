"""AWS Bedrock Runtime (Converse, ConverseStream) as a turnout provider.

provider   ``BedrockProvider``: SigV4 or API-key auth, credentials, the calls over the
           shared HTTP transport (``turnout.providers.transport``), ``load()``
translate  OpenAI chat body → Converse request, pure
stream     Converse response and ConverseStream events → OpenAI completion and chunks, pure
events     reading a ConverseStream body: event-stream frames → chunks, within the deadlines
errors     Bedrock's typed errors (HTTP and in-stream) → ``turnout.errors``
"""
