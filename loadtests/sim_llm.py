"""The SIMULATED OpenAI-compatible LLM server, where the load tests have always found it.

It lives in the installed package (``roost dev`` serves it to agents that use the llm
capability); this module re-exports it, and ``python -m loadtests.sim_llm`` still runs it.
"""

from __future__ import annotations

import sys

from roost.dev.sim_llm import (
    DEFAULT_COMPLETION_TOKENS,
    DEFAULT_MODEL,
    FILLER_WORD,
    FINGERPRINT,
    SimLLMConfig,
    SimLLMServer,
    SimLLMStatistics,
    count_tokens,
    create_app,
    main,
    reply_words,
    serve_sim_llm,
    simulated_duration_s,
)

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "DEFAULT_MODEL",
    "FILLER_WORD",
    "FINGERPRINT",
    "SimLLMConfig",
    "SimLLMServer",
    "SimLLMStatistics",
    "count_tokens",
    "create_app",
    "main",
    "reply_words",
    "serve_sim_llm",
    "simulated_duration_s",
]

if __name__ == "__main__":
    sys.exit(main())
