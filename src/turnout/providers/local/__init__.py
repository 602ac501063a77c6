"""The embedded model: llama.cpp in the gateway's process, as a turnout provider.

provider  ``LocalProvider``: admission, deadlines, OpenAI shapes, error translation and
          ``load()`` (running and queued jobs), on the event loop
deltas    llama.cpp's tool-call deltas in OpenAI's shape (a call's id and name once, no
          legacy function_call)
worker    the thread side: a pool of workers, one llama.cpp model each, fed from one
          bounded job queue; events go back to the loop one chunk at a time
"""
