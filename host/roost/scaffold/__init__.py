"""``roost new``: a working agent to start from.

``roost new NAME [--template echo|chat|tools] [--lang python|c|zig]`` writes a directory
``NAME/`` with the agent's source, its manifest (``agent.toml``), a test file that runs the
agent in a real host (``test_agent.py``, with Roost's pytest plugin), a short README and a
``.gitignore``. The agent builds and its tests pass as written.

Templates:

- ``echo``: echoes each message and counts them in its state (Python, C, Zig);
- ``chat``: a chat with memory, answered by the host's model (Python, C);
- ``tools``: answers with the model and works out the arithmetic in a question with a
  plain-Python helper module, tested on its own (Python). Tool calling, where the model
  asks for a tool, is not in the SDK yet; this is the shape such an agent has today.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..address import validate_kind_name
from ..errors import ConfigError, InvalidAddress

LANGUAGES = ("python", "c", "zig")
TEMPLATES = ("echo", "chat", "tools")
_SOURCE = {"python": "agent.py", "c": "agent.c", "zig": "agent.zig"}
_TEMPLATE_DIR = "templates"
_WIDTH = 90
_GITIGNORE = "*.wasm\n.roost/\n__pycache__/\n.pytest_cache/\n.zig-cache/\n"


@dataclass(frozen=True)
class NewAgent:
    directory: Path
    files: tuple[Path, ...]
    """What was written, relative to :attr:`directory`."""


def available(lang: str) -> tuple[str, ...]:
    """The templates there are for ``lang``."""
    root = resources.files(__name__).joinpath(_TEMPLATE_DIR)
    return tuple(t for t in TEMPLATES if root.joinpath(f"{lang}-{t}").is_dir())


def new_agent(
    name: str, *, template: str = "echo", lang: str = "python", directory: Path | None = None
) -> NewAgent:
    """Write a new agent named ``name`` into ``directory`` (default ``./NAME``), which must
    not exist or be empty."""
    try:
        validate_kind_name(name)
    except InvalidAddress as exc:
        raise ConfigError(f"{exc}") from None
    if lang not in LANGUAGES:
        raise ConfigError(f"no language {lang!r}; choose one of {', '.join(LANGUAGES)}")
    choices = available(lang)
    if template not in choices:
        raise ConfigError(f"no {template!r} template for {lang}; {lang} has {', '.join(choices)}")
    target = directory if directory is not None else Path(name)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(
            f"{target.absolute()} already exists and is not empty; pick another name or directory"
        )
    values = {
        "name": name,
        "class_name": _class_name(name),
        "ext": _SOURCE[lang].rsplit(".", 1)[1],
    }
    written: list[Path] = []
    files = resources.files(__name__).joinpath(_TEMPLATE_DIR, f"{lang}-{template}")
    target.mkdir(parents=True, exist_ok=True)
    for item in sorted(files.iterdir(), key=lambda i: i.name):
        if not item.name.endswith(".tmpl"):
            continue
        relative = Path(item.name.removesuffix(".tmpl"))
        (target / relative).write_text(_fill(item.read_text(encoding="utf-8"), values))
        written.append(relative)
    (target / "README.md").write_text(_readme(name, template, lang), encoding="utf-8")
    (target / ".gitignore").write_text(_GITIGNORE, encoding="utf-8")
    written += [Path("README.md"), Path(".gitignore")]
    return NewAgent(target, tuple(written))


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _class_name(name: str) -> str:
    words = [w for w in name.replace("_", "-").replace(".", "-").split("-") if w]
    camel = "".join(w[:1].upper() + w[1:] for w in words)
    if not camel or not camel.isidentifier():
        camel = "Agent" + "".join(c for c in camel if c.isalnum())
    return camel if camel != "Agent" else "MyAgent"


_WHAT = {
    "echo": "echoes each message and counts the messages in its state",
    "chat": "a chat with memory, answered by the host's model",
    "tools": "answers with the host's model, with the arithmetic in a question worked out "
    "exactly by a plain-Python helper (`arithmetic.py`)",
}


def _readme(name: str, template: str, lang: str) -> str:
    source = _SOURCE[lang]
    reload = (
        "every save reloads it in well under a second"
        if lang == "python"
        else "every save rebuilds it (a second or two)"
    )
    paragraphs = [
        f"A Roost agent ({lang}): {_WHAT[template]}. Made with "
        f"`roost new {name} --template {template} --lang {lang}`."
    ]
    if template in ("chat", "tools"):
        paragraphs.append(
            "It talks to the model provider the host is configured with "
            "(`ROOST_LLM_BASE_URL`, `ROOST_LLM_API_KEY`); `roost dev` gives it a SIMULATED "
            "model when none is set, and the tests a scripted one (`fake_llm`). Name your "
            "provider's models in `agent.toml`."
        )
    if template == "tools":
        paragraphs.append(
            "The agent decides what to compute and tells the model the results. Tool "
            "calling, where the model asks for a tool, is not in Roost's SDK yet."
        )
    bullets = [
        "`roost dev` serves it at http://127.0.0.1:8470 (auth off) with a chat in the "
        "terminal that shows replies, streamed tokens, pushes and the agent's logs; "
        f"{reload}, and its agents keep their state.",
        "`python -m pytest` runs `test_agent.py`: the agent in a real host, on virtual time "
        "(Roost's `docs/testing.md`; needs `pip install 'roost[testing]'`).",
        "`roost run --message hi` builds it for production (cached by content) and sends "
        "one message; `roost run` alone opens a chat.",
        f"`roost build {source}` writes `{name}.wasm`; `roost serve --deploy agent.toml` "
        "serves it with auth on, or upload both with `POST /v1/kinds`.",
    ]
    text = [f"# {name}", *(textwrap.fill(p, _WIDTH) for p in paragraphs), "In this directory:"]
    text.append(
        "\n".join(
            textwrap.fill(b, _WIDTH, initial_indent="- ", subsequent_indent="  ") for b in bullets
        )
    )
    text.append(
        textwrap.fill(
            f"`agent.toml` grants the agent its capabilities and sets its limits; `{source}` "
            "is the agent.",
            _WIDTH,
        )
    )
    return "\n\n".join(text) + "\n"
