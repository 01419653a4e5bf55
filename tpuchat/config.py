"""User settings in TOML: $TPUCHAT_CONFIG (a file) or <user config dir>/tpuchat/config.toml.

    [chat]
    system_prompt = ""
    model_dirs = ["~/models"]      # where the model picker looks, besides the current dir
    newline_key = "ctrl+j"         # an extra key that inserts a newline in the input

    [generation]
    max_new_tokens = 512
    sample = false                 # greedy unless true
    temperature = 0.7
    top_p = 0.9
    top_k = 0
    repetition_penalty = 1.0
    seed = -1                      # -1: random

Reading uses tomllib (Python 3.11+) or tomli (3.8-3.10); without either the
defaults are used.  Writing is a small hand-written TOML emitter (only
strings, numbers, booleans and lists of strings are needed).
"""

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional


@dataclass
class Settings:
    system_prompt: str = ""
    model_dirs: List[str] = field(default_factory=list)
    newline_key: str = "ctrl+j"
    max_new_tokens: int = 512
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = -1

    CHAT_KEYS = ("system_prompt", "model_dirs", "newline_key")

    def gen_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.CHAT_KEYS}


GEN_KEYS = tuple(f.name for f in fields(Settings) if f.name not in Settings.CHAT_KEYS)


def config_path() -> Path:
    from .paths import config_file

    return config_file()


def _toml_loads(text: str) -> dict:
    try:
        import tomllib  # type: ignore  # Python 3.11+
    except ImportError:
        try:
            import tomli as tomllib  # type: ignore
        except ImportError:
            return {}
    return tomllib.loads(text)


def coerce(name: str, value: Any) -> Any:
    """A value for Settings.<name> from TOML or from text typed by the user; ValueError if it does not fit."""
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if isinstance(value, str):
        v = value.strip()
        if kind in (bool, "bool"):
            low = v.lower()
            if low in ("1", "true", "on", "yes", "sample"):
                return True
            if low in ("0", "false", "off", "no", "greedy"):
                return False
            raise ValueError(f"{name} must be on or off, not {value!r}")
        if kind in (int, "int"):
            try:
                return int(v)
            except ValueError:
                raise ValueError(f"{name} must be a whole number, not {value!r}") from None
        if kind in (float, "float"):
            try:
                return float(v)
            except ValueError:
                raise ValueError(f"{name} must be a number, not {value!r}") from None
        if name == "model_dirs":
            return [p for p in (s.strip() for s in v.split(",")) if p]
        return value
    if kind in (float, "float") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in (int, "int") and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (bool, "bool") and isinstance(value, bool):
        return value
    if name == "model_dirs" and isinstance(value, list):
        return [str(x) for x in value]
    if name in ("system_prompt", "newline_key") and isinstance(value, str):
        return value
    raise ValueError(f"{name}: unexpected value {value!r}")


def validate(s: Settings) -> Optional[str]:
    """A one-line complaint about impossible values, or None."""
    if s.max_new_tokens < 1:
        return "max_new_tokens must be at least 1"
    if s.temperature <= 0:
        return "temperature must be above 0"
    if not 0 < s.top_p <= 1:
        return "top_p must be in (0, 1]"
    if s.top_k < 0:
        return "top_k must be 0 (off) or more"
    if s.repetition_penalty <= 0:
        return "repetition_penalty must be above 0 (1.0 is off)"
    return None


def load(path: Optional[Path] = None) -> Settings:
    """Settings from the file; unknown keys and bad values are ignored (defaults kept)."""
    p = path or config_path()
    s = Settings()
    try:
        data = _toml_loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return s
    flat = {}
    for section in ("chat", "generation"):
        sec = data.get(section)
        if isinstance(sec, dict):
            flat.update(sec)
    for k, v in flat.items():
        if k in {f.name for f in fields(Settings)}:
            try:
                setattr(s, k, coerce(k, v))
            except ValueError:
                pass
    return s


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v)
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def dumps(s: Settings) -> str:
    d = asdict(s)
    lines = ["# tpuchat settings (edit freely; see `tpuchat --help`)", "", "[chat]"]
    lines += [f"{k} = {_toml_value(d[k])}" for k in Settings.CHAT_KEYS]
    lines += ["", "[generation]"]
    lines += [f"{k} = {_toml_value(d[k])}" for k in GEN_KEYS]
    return "\n".join(lines) + "\n"


def save(s: Settings, path: Optional[Path] = None) -> Path:
    p = path or config_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".toml.tmp")
    tmp.write_text(dumps(s), encoding="utf-8")
    os.replace(str(tmp), str(p))
    return p
