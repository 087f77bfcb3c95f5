"""Command-line options shared by every daemon: declared once, layered defaults < file < env < flags.

Each daemon lists its `Option`s; `load_settings` builds the argparse parser from them, reads
`--config FILE` (YAML, unknown keys are errors), then `MOONCAKE_<NAME>` variables, then the
flags given on the command line, and converts every value with the option's own parser.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Callable

import yaml

from mooncake_proto.units import parse_duration, parse_size

ENV_PREFIX = "MOONCAKE_"


def parse_bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


@dataclasses.dataclass(frozen=True)
class Option:
    flag: str                       # "--lease-ttl"
    default: Any
    convert: Callable[[Any], Any] = str
    help: str = ""
    is_switch: bool = False         # a flag that takes no value

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


SIZE, DURATION, BOOL = parse_size, parse_duration, parse_bool


def build_parser(prog: str, description: str, options: list[Option]) -> argparse.ArgumentParser:
    # SUPPRESS: the namespace then holds only flags the user typed, so they can win last
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="YAML file of options (keys as flag names)")
    for opt in options:
        shown = f" (default {opt.default})" if opt.default not in (None, "", False) else ""
        if opt.is_switch:
            parser.add_argument(opt.flag, action="store_true", help=opt.help + shown)
        else:
            parser.add_argument(opt.flag, help=opt.help + shown)
    return parser


def _read_config_file(path: str, known: dict[str, Option]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    values = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in known:
            raise ValueError(f"{path}: unknown option {key!r}")
        values[dest] = value
    return values


def load_settings(prog: str, description: str, options: list[Option],
                  argv: list[str] | None = None,
                  environ: dict[str, str] | None = None) -> argparse.Namespace:
    """Parses argv into a namespace with every option's final, converted value."""
    parser = build_parser(prog, description, options)
    flags = vars(parser.parse_args(argv))
    environ = os.environ if environ is None else environ
    known = {opt.dest: opt for opt in options}
    layers: dict[str, Any] = {opt.dest: opt.default for opt in options}
    if flags.get("config"):
        try:
            layers.update(_read_config_file(flags["config"], known))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            parser.error(str(exc))
    for dest in known:
        env_value = environ.get(ENV_PREFIX + dest.upper())
        if env_value is not None:
            layers[dest] = env_value
    layers.update({k: v for k, v in flags.items() if k in known})
    settings = argparse.Namespace(config=flags.get("config"))
    for dest, value in layers.items():
        try:
            setattr(settings, dest, None if value is None else known[dest].convert(value))
        except (TypeError, ValueError) as exc:
            parser.error(f"{known[dest].flag}: {exc}")
    return settings
