"""Read config files and ``--set`` overrides into one validated ``NeoXConfig``.

Files may be flat, as GPT-NeoX writes them (``num-layers: 12``), sectioned
(``model: {num_layers: 12}``), or a mix; ``-`` in a key is read as ``_``.
Every field name is unique across sections, so a flat key finds its section by
name. Rules, and why:

* Files merge left to right and later keys win (GPT-NeoX refuses a key given
  twice; letting a later file override is what a user layering a model file
  and a cluster file expects). Sections merge key by key, but a key's value is
  replaced whole: ``zero_optimization`` or ``optimizer`` from a later file is
  the complete block, as it would be in GPT-NeoX. To change one entry inside
  such a block, use a dotted ``--set zero_optimization.stage=2``.
* ``--set key=value`` is applied after the files, in order. Keys may be flat
  (``hidden_size``), section-qualified (``model.hidden_size``) or reach inside
  a dict value (``optimizer.params.lr``). Values are YAML scalars
  (``true``, ``3``, ``1e-4``, ``[1, 2]``).
* A key GPT-NeoX knows but neox has no field for is kept (``cfg.ignored_keys``)
  and named in one warning per load, so a GPT-NeoX file never fails on a
  switch neox does not act on; a key nobody knows is an error with a
  did-you-mean.
* A config argument that names no existing file and has no path separator
  may name a shipped preset (``pythia-160m``) or ``quickstart``; an existing
  file of that name wins (see ``neoxcli.config.presets``). Every command that
  loads configs goes through here, so every command accepts preset names.
* ``hf_id`` (top level) names the Hugging Face model a file reproduces. The
  model ignores it; it is kept as ``cfg.hf_id`` and not written back out.
* ``launcher`` is both a section and a field of that section: a mapping is the
  section, anything else the field. Likewise a ``checkpoint`` mapping with none
  of neox's checkpoint keys is DeepSpeed's ``checkpoint`` block.

GPT-NeoX spellings that neox reads differently are translated here, so the
rest of neox sees one vocabulary:

* ``gas`` -> ``gradient_accumulation_steps``, ``batch_size`` ->
  ``train_micro_batch_size_per_gpu``, ``clip_grad`` -> ``gradient_clipping``,
  ``lr`` -> ``optimizer.params.lr``, ``zero_stage`` ->
  ``zero_optimization.stage``, ``save_interval`` (older releases) ->
  ``checkpoint_factor``. GPT-NeoX derives these from the real keys and
  overwrites them; here they act as aliases, and the real key wins when a file
  gives both.
* ``fp16: {enabled: true}`` sets ``precision: fp16``, ``bf16: {enabled: true}``
  (or GPT-NeoX's older ``fp16: {type: bfloat16}``) sets ``bfloat16``; an
  explicit precision that disagrees is an error, as in GPT-NeoX.
* ``norm: te_layernorm`` / ``te_rmsnorm`` (Transformer Engine kernels of the
  same maths) become ``layernorm`` / ``rmsnorm``; ``data_impl: infer`` becomes
  ``mmap``, the only format neox reads.
* ``mlp_type: llama`` (older GPT-NeoX) becomes the gated activation
  (``swiglu``/``geglu``) with LLaMA's bias-free MLP and width
  ``256 * ceil(int(8 * hidden_size / 3) / 256)`` (``intermediate_size`` three
  times that) unless ``intermediate_size`` is given.
* Values neox cannot run are errors that say so rather than schema noise:
  ``pos_emb: rpe``, ``norm: scalenorm``, activations outside neox's set,
  ``precision: fp8``, ``data_impl: cached``.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from neoxcli.config.neox_keys import GPT_NEOX_KEYS
from neoxcli.config.presets import resolve_config_path
from neoxcli.config.schema import SECTIONS, Activation, CheckpointConfig, NeoXConfig, field_index
from neoxcli.errors import ConfigError

__all__ = ["dump_config", "dump_yaml", "load_config", "parse_override"]

_FIELDS = field_index()

# GPT-NeoX names that are derived copies of a real key there; here they feed that key.
_ALIASES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "gas": ("train", "gradient_accumulation_steps", ()),
    "batch_size": ("train", "train_micro_batch_size_per_gpu", ()),
    "clip_grad": ("train", "gradient_clipping", ()),
    "lr": ("train", "optimizer", ("params", "lr")),
    "zero_stage": ("parallel", "zero_optimization", ("stage",)),
    # Older GPT-NeoX releases named checkpoint_factor this (every N iterations, linear scale).
    "save_interval": ("checkpoint", "checkpoint_factor", ()),
}

_SET = "--set"
_MISSING: Any = object()

# Top-level keys that describe a file rather than set anything: kept aside, never validated as fields.
_META_KEYS = ("hf_id",)
_META = "(meta)"  # the _Op.section of such a key


# --------------------------------------------------------------------------- YAML


class _YamlLoader(yaml.SafeLoader):
    """A SafeLoader that reads ``6e-4`` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot, so ``lr: 6e-4`` would be
    the string "6e-4"; people write learning rates that way all the time.
    """


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _DuplicateKey(yaml.YAMLError):
    """A mapping gives the same key twice; YAML would silently keep the last one."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.second = key, first, second


def _construct_mapping(loader: _YamlLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    """SafeLoader's mapping, refusing a key written twice (``<<`` merges may still be overridden)."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise _DuplicateKey(key, seen[key], line)
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_YamlLoader.add_constructor("tag:yaml.org,2002:map", lambda loader, node: _construct_mapping(loader, node))

# Bounds on what one file may expand to. PyYAML shares aliased nodes, but everything
# after it (copies, validation, dumping) walks the expanded tree: ten levels of
# nine-fold aliases are 9**10 nodes from a few hundred bytes. Real configs hold a
# few thousand values and nest a handful of levels.
MAX_NODES = 200_000
MAX_DEPTH = 64


def _check_size(data: Any, label: str) -> None:
    """Refuse a tree that nests deeper than ``MAX_DEPTH`` or expands past ``MAX_NODES`` values.

    Sizes are memoised per object, so an alias bomb costs its number of distinct
    nodes, not its expansion. The error names the key under which it happens.
    """
    sizes: dict[int, int] = {}

    def size(obj: Any, depth: int, path: tuple[str, ...]) -> int:
        if not isinstance(obj, (dict, list)):
            return 1
        known = sizes.get(id(obj))
        if known is not None:
            return known
        where = ".".join(path) or "the top level"
        if depth > MAX_DEPTH:
            raise ConfigError(
                f"{label}: '{where}' nests deeper than {MAX_DEPTH} levels",
                hint="a config is a few levels of mappings and lists",
            )
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        total = 1
        for key, value in items:
            total += size(value, depth + 1, path if isinstance(obj, list) else (*path, str(key)))
            if total > MAX_NODES:
                raise ConfigError(
                    f"{label}: '{where}' expands to more than {MAX_NODES:,} values (YAML aliases?)",
                    hint="write the values out, or drop the anchors and aliases (&name, *name)",
                )
        sizes[id(obj)] = total
        return total

    size(data, 0, ())


class _YamlDumper(yaml.SafeDumper):
    """Block style for mappings, one-line lists without mappings (``betas: [0.9, 0.95]``)."""


def _has_mapping(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and any(_has_mapping(v) for v in value)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=not _has_mapping(data))


_YamlDumper.add_representer(list, _represent_list)


def _parse_text(text: str, label: str, *, json_first: bool) -> Any:
    """Parse one file's text; errors name the file and line."""
    if json_first:
        try:
            return json.loads(text, object_pairs_hook=lambda pairs: _json_object(pairs, label))
        except json.JSONDecodeError:
            pass  # GPT-NeoX reads .json through YAML too (comments, trailing commas)
        except RecursionError:
            raise _too_deep(label) from None
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except RecursionError:
        raise _too_deep(label) from None
    except _DuplicateKey as exc:
        raise ConfigError(
            f"duplicate key '{exc.key}' in {label} at lines {exc.first} and {exc.second}",
            hint="YAML keeps only the last one: delete the key you do not mean",
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "not valid YAML"
        raise ConfigError(
            f"invalid YAML in {label}{where}: {problem}",
            hint="check indentation, quoting and brackets on that line and the one before",
        ) from None
    except yaml.YAMLError as exc:  # pragma: no cover - PyYAML errors are marked in practice
        raise ConfigError(f"invalid YAML in {label}: {exc}") from None


def _too_deep(label: str) -> ConfigError:
    return ConfigError(
        f"{label} nests too deeply to read (more than {MAX_DEPTH} levels)",
        hint="a config is a few levels of mappings and lists",
    )


def _json_object(pairs: list[tuple[str, Any]], label: str) -> dict[str, Any]:
    """A JSON object, refusing a key given twice as the YAML reader does."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(
                f"duplicate key '{key}' in {label}", hint="JSON keeps only the last one: delete one"
            )
        out[key] = value
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``key=value`` and read the value as a YAML scalar (``true``, ``3``, ``1e-4``, ``[1, 2]``)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got '{item}'", hint="e.g. --set model.hidden_size=256")
    if not raw.strip():
        return key, None
    try:
        value = yaml.load(raw, Loader=_YamlLoader)
    except RecursionError:
        raise _too_deep(f"--set {key}") from None
    except yaml.YAMLError:
        raise ConfigError(
            f"cannot read the value of --set {item}",
            hint="quote it for the shell and YAML, e.g. --set 'data_path=\"a: b\"'",
        ) from None
    _check_size(value, f"--set {key}")
    return key, value


# --------------------------------------------------------------------------- merging


def _norm(key: Any) -> str:
    return str(key).strip().replace("-", "_")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


@dataclass
class _Op:
    """One assignment from one source: a field (or a path inside its value), or an ignored key."""

    section: str | None  # None: a GPT-NeoX key neox ignores
    name: str
    path: tuple[str, ...]
    value: Any
    label: str
    alias: bool = False


def _is_deepspeed_checkpoint(key: str, value: Any) -> bool:
    """DeepSpeed's ``checkpoint`` block shares its name with neox's checkpoint section."""
    return (
        key == "checkpoint"
        and isinstance(value, Mapping)
        and bool(value)
        and not any(_norm(k) in CheckpointConfig.model_fields for k in value)
    )


def _suggest(name: str, section: str | None) -> str | None:
    """The closest known key, preferring neox's own names to GPT-NeoX-only ones."""
    pools: list[list[str]] = []
    if section is not None:
        pools.append(list(SECTIONS[section].model_fields))
    pools.append([*_FIELDS, *SECTIONS, *_ALIASES, *_META_KEYS])
    pools.append(sorted(GPT_NEOX_KEYS))
    for pool in pools:
        match = difflib.get_close_matches(name, pool, n=1, cutoff=0.75)
        if match:
            return match[0]
    match = difflib.get_close_matches(name, [k for pool in pools for k in pool], n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown(shown: str, name: str, label: str, section: str | None) -> ConfigError:
    guess = _suggest(name, section)
    if guess is not None:
        hint = f"did you mean '{guess}'?"
    else:
        hint = "keys are neox's section fields or GPT-NeoX argument names (`-` and `_` both work)"
    return ConfigError(f"unknown key '{shown}' in {label}", hint=hint)


def _classify(
    name: str, value: Any, path: tuple[str, ...], label: str, section: str | None, shown: str
) -> _Op:
    """Turn one (normalized) key into an assignment, or fail with a suggestion."""
    target: tuple[str, str, tuple[str, ...]] | None = None
    alias = False
    if name in _FIELDS:
        target = (_FIELDS[name], name, ())
    elif name in _ALIASES:
        target, alias = _ALIASES[name], True
    if name in _META_KEYS and section is None:
        return _Op(_META, name, path, value, label)
    if target is not None:
        tsection, field, tpath = target
        if section is not None and tsection != section:
            raise ConfigError(
                f"'{shown}' in {label}: {name} is a {tsection} setting, not a {section} one",
                hint=f"write it under {tsection}: or at the top level",
            )
        return _Op(tsection, field, tpath + path, value, label, alias)
    if name in GPT_NEOX_KEYS:
        return _Op(None, name, path, value, label)
    raise _unknown(shown, name, label, section)


def _ops_from_mapping(data: Mapping[Any, Any], label: str) -> list[_Op]:
    """The assignments one file (or one undotted --set) makes, aliases first so real keys win."""
    ops: list[_Op] = []
    seen: dict[tuple[str | None, str], str] = {}

    def add(op: _Op, shown: str) -> None:
        if not op.alias and not op.path:
            prev = seen.get((op.section, op.name))
            if prev is not None:
                raise ConfigError(
                    f"'{op.name}' is given twice in {label} (as '{prev}' and '{shown}')",
                    hint="keep one; '-' and '_' spell the same key",
                )
            seen[(op.section, op.name)] = shown
        ops.append(op)

    for raw_key, value in data.items():
        key = _norm(raw_key)
        is_section = key in SECTIONS and not (key == "launcher" and not isinstance(value, Mapping))
        if is_section and not _is_deepspeed_checkpoint(key, value):
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"'{raw_key}' in {label} must be a mapping of {key} settings, got {_describe(value)}"
                )
            for sub_raw, sub_value in value.items():
                shown = f"{raw_key}.{sub_raw}"
                add(_classify(_norm(sub_raw), sub_value, (), label, key, shown), shown)
        else:
            add(_classify(key, value, (), label, None, str(raw_key)), str(raw_key))
    return [op for op in ops if op.alias] + [op for op in ops if not op.alias]


def _ops_from_override(item: str, label: str = _SET) -> list[_Op]:
    """The assignments of one ``key=value``; ``label`` names its source in errors (``--set``, ``--num-gpus``)."""
    key, value = parse_override(item)
    parts = [_norm(p) for p in key.split(".")]
    if not all(parts):
        raise ConfigError(f"--set key '{key}' has an empty part", hint="e.g. --set model.hidden_size=256")
    if len(parts) == 1:
        return _ops_from_mapping({key: value}, label)
    if parts[0] in SECTIONS:
        section, name, rest = parts[0], parts[1], tuple(parts[2:])
    else:
        section, name, rest = None, parts[0], tuple(parts[1:])
    return [_classify(name, value, rest, label, section, key)]


def _field_default(section: str, name: str) -> Any:
    default = SECTIONS[section].model_fields[name].get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        default = default.model_dump()
    return copy.deepcopy(default)


def _set_path(container: Any, base: str, path: tuple[str, ...], value: Any, label: str) -> None:
    """Set ``container[path[0]]...[path[-1]] = value``, creating mappings on the way."""
    node = container
    for i, part in enumerate(path):
        if not isinstance(node, dict):
            owner = ".".join((base, *path[:i]))
            dotted = ".".join((base, *path))
            raise ConfigError(
                f"cannot set '{dotted}' (in {label}): {owner} is {_describe(node)}, not a mapping"
            )
        if i == len(path) - 1:
            node[part] = copy.deepcopy(value)
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]


class _Merged:
    """The raw settings tree being built, with which sources set each field."""

    def __init__(self) -> None:
        self.tree: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        self.origins: dict[tuple[str, str], list[str]] = {}
        self.ignored: dict[str, Any] = {}
        self.ignored_origins: dict[str, list[str]] = {}
        self.meta: dict[str, Any] = {}

    def apply(self, op: _Op) -> None:
        if op.section == _META:
            if op.path or not (op.value is None or isinstance(op.value, str)):
                raise ConfigError(
                    f"{op.name} (in {op.label}) must be a Hugging Face model id or null, "
                    f"got {_describe(op.value) if not op.path else 'a dotted key'}",
                    hint=f"e.g. {op.name}: EleutherAI/pythia-160m",
                )
            self.meta[op.name] = op.value
            return
        if op.section is None:
            if op.path:
                current = self.ignored.get(op.name)
                if not isinstance(current, dict):
                    current = self.ignored[op.name] = {}
                _set_path(current, op.name, op.path, op.value, op.label)
                self._note(self.ignored_origins.setdefault(op.name, []), op.label)
            else:
                self.ignored[op.name] = copy.deepcopy(op.value)
                self.ignored_origins[op.name] = [op.label]
            return
        section = self.tree[op.section]
        if not op.path:
            section[op.name] = copy.deepcopy(op.value)
            self.origins[(op.section, op.name)] = [op.label]
            return
        current = section.get(op.name, _MISSING)
        if current is _MISSING or current is None:
            current = _field_default(op.section, op.name)
            section[op.name] = {} if current is None else current
        _set_path(section[op.name], op.name, op.path, op.value, op.label)
        self._note(self.origins.setdefault((op.section, op.name), []), op.label)

    @staticmethod
    def _note(labels: list[str], label: str) -> None:
        if label not in labels:
            labels.append(label)

    def labels(self, *keys: tuple[str, str]) -> list[str]:
        out: list[str] = []
        for key in keys:
            for label in self.origins.get(key, []):
                self._note(out, label)
        return out

    def where(self, *keys: tuple[str, str]) -> str:
        """`` (in a.yml)`` / `` (from a.yml, b.yml)`` for error messages; empty for defaults."""
        return _where(self.labels(*keys))


def _where(labels: Sequence[str]) -> str:
    if not labels:
        return ""
    if len(labels) == 1:
        return f" (in {labels[0]})"
    return f" (from {', '.join(labels)})"


# --------------------------------------------------------------------------- translation


_GATED = {"silu": "swiglu", "swish": "swiglu", "swiglu": "swiglu", "gelu": "geglu", "geglu": "geglu"}

# GPT-NeoX keys neox has no field for that change the model or the training objective once set
# away from GPT-NeoX's default. Ignoring them would silently train something else, so a value
# other than the default (shown in the hint) is refused; the default itself is a no-op.
_REFUSED: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "moe_num_experts": (lambda v: v in (None, 1), "mixture-of-experts layers", "1"),
    "num_unique_layers": (lambda v: v is None, "sharing weights between layers", "null"),
    "use_qk_layernorm": (lambda v: not v, "LayerNorm on queries and keys", "false"),
    "opt_pos_emb_offset": (lambda v: v in (None, 0), "OPT's learned-position offset", "0"),
    "soft_prompt_tuning": (
        lambda v: v is None or (isinstance(v, Mapping) and v.get("enabled", True) is False),
        "soft prompt tuning",
        "null",
    ),
    "train_impl": (
        lambda v: v in (None, "normal"),
        "training objectives other than language modelling (DPO, KTO, reward models, REINFORCE)",
        "normal",
    ),
}

# muP multipliers neox does not implement; GPT-NeoX applies them only under use_mup.
_MUP_MULTIPLIERS = ("mup_init_scale", "mup_attn_temp", "mup_output_temp", "mup_rp_embedding_mult")


def _translate(m: _Merged) -> None:
    """Map GPT-NeoX values onto neox's, and reject the ones neox cannot run, before validation."""
    model, train, data = m.tree["model"], m.tree["train"], m.tree["data"]

    pos = model.get("pos_emb")
    if pos == "rpe":
        raise ConfigError(
            "model.pos_emb: 'rpe' (T5-style relative position buckets) is not supported by neox"
            + m.where(("model", "pos_emb")),
            hint="use pos_emb: rotary (or alibi, learned, sinusoidal, none)",
        )

    norm = model.get("norm")
    if norm in ("te_layernorm", "te_rmsnorm"):
        model["norm"] = norm[3:]
    elif norm == "scalenorm":
        raise ConfigError(
            "model.norm: 'scalenorm' is not supported by neox" + m.where(("model", "norm")),
            hint="use norm: layernorm or rmsnorm",
        )

    supported = typing.get_args(Activation)
    act = model.get("activation")
    if isinstance(act, str) and act not in supported:
        raise ConfigError(
            f"model.activation: '{act}' is not supported by neox" + m.where(("model", "activation")),
            hint=f"use one of: {', '.join(supported)}",
        )

    mlp_type = m.ignored.get("mlp_type", _MISSING)
    if mlp_type == "regular":  # GPT-NeoX's default MLP is neox's: honoured, so not ignored
        del m.ignored["mlp_type"]
    elif mlp_type == "llama":
        labels = m.ignored_origins.pop("mlp_type")
        del m.ignored["mlp_type"]
        act = model.get("activation", "gelu")
        if act not in _GATED:
            raise ConfigError(
                f"model.activation: '{act}' with mlp_type: llama has no gated form in neox"
                + _where(m.labels(("model", "activation")) + labels),
                hint="use activation: silu (SwiGLU) or gelu (GeGLU)",
            )
        model["activation"] = _GATED[act]
        hidden = model.get("hidden_size", _field_default("model", "hidden_size"))
        if (
            model.get("intermediate_size") is None
            and isinstance(hidden, int)
            and not isinstance(hidden, bool)
        ):
            # Older GPT-NeoX's Llama MLP: each branch 8h/3 rounded up to 256, which the
            # current sizing rule (a branch is a third of intermediate_size) gives from 3x that.
            width = int(2 * hidden * 4 / 3)
            model["intermediate_size"] = 3 * 256 * -(-width // 256)
        model.setdefault("use_bias_in_mlp", False)
        for field in ("activation", "intermediate_size", "use_bias_in_mlp"):
            m.origins.setdefault(("model", field), list(labels))

    _refuse_model_changes(m)
    _mlp_sizing(m)

    if train.get("precision") == "fp8":
        raise ConfigError(
            "train.precision: 'fp8' is not supported by neox" + m.where(("train", "precision")),
            hint="use bfloat16, fp16 or fp32",
        )
    _fold_precision(m)

    impl = data.get("data_impl")
    if impl == "infer":
        data["data_impl"] = "mmap"
    elif impl == "cached":
        raise ConfigError(
            "data.data_impl: 'cached' datasets are not supported by neox" + m.where(("data", "data_impl")),
            hint="neox reads mmap datasets (`neox prepare` writes them)",
        )


def _refuse_model_changes(m: _Merged) -> None:
    """A GPT-NeoX key that would change the model neox builds is an error, never a warning."""
    use_mup = m.tree["model"].get("use_mup", False)
    for key, value in m.ignored.items():
        if key in _REFUSED:
            is_default, what, default = _REFUSED[key]
            if is_default(value):
                continue
        elif key in _MUP_MULTIPLIERS and use_mup and value not in (None, 1, 1.0):
            what, default = "this muP multiplier", "1.0"
        else:
            continue
        raise ConfigError(
            f"{key}: {what} is not supported by neox, got {_describe(value)}"
            + _where(m.ignored_origins.get(key, [])),
            hint=f"drop {key} (GPT-NeoX's default is {default}) to train without it",
        )


def _mlp_sizing(m: _Merged) -> None:
    """GPT-NeoX's ``expansion_factor``: the MLP size as a multiple of hidden_size.

    It stands in for ``intermediate_size`` (the model applies GPT-NeoX's gated
    2/3 rule and ``mlp_multiple_of`` rounding to either), so it folds into it.
    """
    model = m.tree["model"]
    factor = m.ignored.pop("expansion_factor", None)
    labels = m.ignored_origins.pop("expansion_factor", [])
    if factor is None:
        return
    where = _where(labels + m.labels(("model", "intermediate_size")))
    if model.get("intermediate_size") is not None:
        raise ConfigError(
            "model: give intermediate_size or expansion_factor, not both" + where,
            hint="GPT-NeoX refuses the pair too",
        )
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < 1e6:
        raise ConfigError(f"expansion_factor: expected a number > 0, got {_describe(factor)}" + where)
    hidden = model.get("hidden_size", _field_default("model", "hidden_size"))
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        model["intermediate_size"] = int(factor * hidden)
        m.origins[("model", "intermediate_size")] = labels


def _fold_precision(m: _Merged) -> None:
    """GPT-NeoX's DeepSpeed ``fp16``/``bf16`` blocks say which precision a run uses."""
    train = m.tree["train"]
    fp16, bf16 = train.get("fp16"), train.get("bf16")
    implied: str | None = None
    source = ""
    if isinstance(fp16, Mapping):
        if fp16.get("type") == "bfloat16":
            implied, source = "bfloat16", "fp16"
        elif fp16.get("enabled", False):
            implied, source = "fp16", "fp16"
    if isinstance(bf16, Mapping) and bf16.get("enabled", False):
        if implied == "fp16":
            raise ConfigError(
                "train: both the fp16 and the bf16 block are enabled"
                + m.where(("train", "fp16"), ("train", "bf16")),
                hint="enable one of them",
            )
        implied, source = "bfloat16", "bf16"
    if implied is None:
        return
    current = train.get("precision")
    if current in (None, "auto"):
        train["precision"] = implied
        m.origins[("train", "precision")] = m.labels(("train", source))
    elif {current, implied} != {"bf16", "bfloat16"} and current != implied:
        raise ConfigError(
            f"train.precision is '{current}' but the {source} block enables {implied}"
            + m.where(("train", "precision"), ("train", source)),
            hint=f"drop one of them, or set {source}.enabled: false",
        )


# --------------------------------------------------------------------------- validation errors


def _problem(err: Mapping[str, Any]) -> str:
    """One pydantic error in a user's words."""
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected an integer, got {_describe(value)}"
    if kind == "bool_for_number":
        return f"expected a number, got {_describe(value)} (a bool is not a number)"
    if kind in ("float_parsing", "float_type"):
        return f"expected a number, got {_describe(value)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false, got {_describe(value)}"
    if kind == "string_type":
        return f"expected a string, got {_describe(value)}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, got {_describe(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, got {_describe(value)}"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected')}, got {_describe(value)}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[kind]} {limit}, got {_describe(value)}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    return str(err["msg"])


def _validation_error(exc: ValidationError, m: _Merged) -> ConfigError:
    """A pydantic ValidationError as one line naming the key, the problem and the file(s)."""
    errors = exc.errors()
    err = errors[0]
    loc = [p for p in err["loc"] if isinstance(p, (str, int))]
    problem = _problem(err)
    keys: list[tuple[str, str]] = []
    if len(loc) >= 2:
        section, name = str(loc[0]), str(loc[1])
        keys.append((section, name))
        key = section + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    elif len(loc) == 1:  # a section validator: name the first field its message mentions
        section = str(loc[0])
        fields = SECTIONS[section].model_fields if section in SECTIONS else {}
        mentioned = sorted(
            (match.start(), name)
            for name in fields
            if (match := re.search(rf"\b{re.escape(name)}\b", problem)) is not None
        )
        keys.extend((section, name) for _, name in mentioned)
        key = f"{section}.{mentioned[0][1]}" if mentioned else section
    else:
        key = "config"
    hint = None
    if err["type"] == "extra_forbidden" and len(loc) >= 2:
        section = str(loc[0])
        model_cls: Any = SECTIONS.get(section)
        for part in loc[1:-1]:
            info = model_cls.model_fields.get(str(part)) if model_cls is not None else None
            ann = info.annotation if info is not None else None
            model_cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model_cls is not None:
            match = difflib.get_close_matches(str(loc[-1]), list(model_cls.model_fields), n=1)
            hint = f"did you mean '{match[0]}'?" if match else f"known: {', '.join(model_cls.model_fields)}"
    if len(errors) > 1 and hint is None:
        more = len(errors) - 1
        hint = f"{more} more problem{'s' if more > 1 else ''} after this one"
    return ConfigError(f"{key}: {problem}{m.where(*keys)}", hint=hint)


def _check(cfg: NeoXConfig, m: _Merged) -> None:
    """Cross-section checks the section models cannot make on their own."""
    mp = cfg.parallel.model_parallel_size
    for name in ("num_attention_heads", "num_kv_heads"):
        heads = getattr(cfg.model, name)
        if heads is not None and heads % mp:
            raise ConfigError(
                f"model.{name} ({heads}) must be divisible by model_parallel_size ({mp})"
                + m.where(("model", name), ("parallel", "model_parallel_size")),
                hint="each model-parallel rank holds a whole number of heads",
            )
    for split in ("train", "valid", "test"):
        paths = getattr(cfg.data, f"{split}_data_paths")
        weights = getattr(cfg.data, f"{split}_data_weights")
        if paths is not None and weights is not None and len(paths) != len(weights):
            raise ConfigError(
                f"data.{split}_data_weights has {len(weights)} entries but {split}_data_paths has {len(paths)}"
                + m.where(("data", f"{split}_data_weights"), ("data", f"{split}_data_paths")),
                hint="give one weight per path",
            )
    stage = (cfg.parallel.zero_optimization or {}).get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise ConfigError(
            f"parallel.zero_optimization.stage: expected 0, 1, 2 or 3, got {_describe(stage)}"
            + m.where(("parallel", "zero_optimization")),
        )
    _check_recipes(cfg, m, stage)
    from neoxcli.config.derived import check_partition_method, mlp_width, split_weights

    width = mlp_width(cfg.model)
    if width % mp:
        raise ConfigError(
            f"model_parallel_size ({mp}) does not divide the MLP width ({width})"
            + m.where(("model", "intermediate_size"), ("parallel", "model_parallel_size")),
            hint="each model-parallel rank holds an equal slice of the MLP: pick a width that "
            "model_parallel_size divides",
        )
    if cfg.parallel.pipe_parallel_size > 1 and stage > 1:
        raise ConfigError(
            f"parallel.zero_optimization.stage: ZeRO stage {stage} cannot be combined with pipeline "
            "parallelism" + m.where(("parallel", "zero_optimization"), ("parallel", "pipe_parallel_size")),
            hint="DeepSpeed's pipeline engine supports ZeRO stage 0 or 1",
        )
    try:
        check_partition_method(cfg.parallel.pipe_partition_method)
    except ConfigError as exc:
        raise ConfigError(
            f"parallel.{exc.message}" + m.where(("parallel", "pipe_partition_method")), hint=exc.hint
        ) from None
    try:
        split_weights(cfg.data.split)
    except ValueError as exc:
        raise ConfigError(
            f"data.split: {exc}" + m.where(("data", "split")), hint='use three weights such as "969,30,1"'
        ) from None


def _check_recipes(cfg: NeoXConfig, m: _Merged, stage: int) -> None:
    """Sequence-length curricula against ``seq_length``; optimizers against the ZeRO stage."""
    from neoxcli.config.schema import ADAM_TYPES

    t, seq = cfg.train, cfg.model.seq_length
    curriculum = t.curriculum_learning if t.curriculum_learning and t.curriculum_learning.enabled else None
    if t.seq_length_warmup is not None and curriculum is not None:
        raise ConfigError(
            "seq_length_warmup and curriculum_learning both set the sequence length"
            + m.where(("train", "seq_length_warmup"), ("train", "curriculum_learning")),
            hint="keep one of them",
        )
    longest = max(t.seq_length_warmup.stages) if t.seq_length_warmup is not None else None
    if curriculum is not None:
        longest = curriculum.max_difficulty
        if curriculum.schedule_type == "fixed_discrete":
            longest = max(curriculum.schedule_config["difficulty"])
    if longest is not None and longest > seq:
        key = "seq_length_warmup" if t.seq_length_warmup is not None else "curriculum_learning"
        raise ConfigError(
            f"train.{key}: a sequence length of {longest} is above seq_length ({seq})"
            + m.where(("train", key), ("model", "seq_length")),
            hint="samples are cut from seq_length-long ones: every stage must be at most seq_length",
        )
    kind = t.optimizer.type.lower()
    if t.use_bnb_optimizer and kind not in (*ADAM_TYPES, "adamw8bit"):
        raise ConfigError(
            f"train.use_bnb_optimizer replaces Adam/AdamW, but optimizer.type is {t.optimizer.type}"
            + m.where(("train", "use_bnb_optimizer"), ("train", "optimizer")),
            hint="set optimizer.type: Adam, or drop use_bnb_optimizer",
        )
    # bitsandbytes' 8-bit AdamW is tested under ZeRO 0-3; torchao's under ZeRO 0 and 1 only.
    if kind == "torchao_adamw8bit" and stage > 1:
        raise ConfigError(
            f"{t.optimizer.type} runs with ZeRO stage 0 or 1 only (zero_optimization.stage is {stage})"
            + m.where(("parallel", "zero_optimization"), ("train", "optimizer")),
            hint="use zero_optimization.stage 0 or 1 with it, or optimizer.type: adamw8bit (bitsandbytes)",
        )


# --------------------------------------------------------------------------- public API


def _read(path: str | Path) -> tuple[str, Mapping[Any, Any]]:
    """(label, top-level mapping) of one config file (or shipped config named by a bare name)."""
    label = resolve_config_path(path)
    p = Path(label).expanduser()
    if not p.exists() and not p.suffix and p.with_name(p.name + ".yml").is_file():
        p = p.with_name(p.name + ".yml")  # GPT-NeoX lets `small` stand for `small.yml`
    if not p.exists():
        raise ConfigError(f"config file not found: {label}")
    if p.is_dir():
        raise ConfigError(f"config path is a directory, not a file: {label}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file is not UTF-8 text: {label}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {label}: {exc.strerror or exc}") from None
    data = _parse_text(text, label, json_first=p.suffix.lower() == ".json")
    _check_size(data, label)
    if data is None:
        return label, {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{label} must hold a mapping of keys to values at the top level, got {_describe(data)}",
            hint="e.g. `num_layers: 12` or `model: {num_layers: 12}`",
        )
    return label, data


def _default_warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_config(
    paths: Sequence[str | Path] | str | Path,
    overrides: Sequence[str] = (),
    *,
    warn: Callable[[str], None] | None = None,
    options: Sequence[tuple[str, str]] = (),
) -> NeoXConfig:
    """Merge config files left to right, apply ``--set`` overrides, validate and return the config.

    ``warn`` receives at most one message per call, naming the GPT-NeoX keys
    that were accepted but are not acted on (without a ``warning:`` prefix);
    by default it is printed to stderr as ``warning: ...``. Those keys and
    their values stay available as ``cfg.ignored_keys``. Every problem is a
    ``ConfigError`` whose message names the key and the file it came from.
    ``options`` are ``(option, "key=value")`` pairs a command turns its own
    flags into, applied after the overrides; errors name the option, not ``--set``.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    merged = _Merged()
    sources: list[str] = []
    for path in paths:
        label, data = _read(path)
        sources.append(label)
        for op in _ops_from_mapping(data, label):
            merged.apply(op)
    for item in overrides:
        for op in _ops_from_override(item):
            merged.apply(op)
        if _SET not in sources:
            sources.append(_SET)
    for option, item in options:
        for op in _ops_from_override(item, option):
            merged.apply(op)
        if option not in sources:
            sources.append(option)
    _translate(merged)
    try:
        cfg = NeoXConfig.model_validate(merged.tree)
    except ValidationError as exc:
        raise _validation_error(exc, merged) from None
    _check(cfg, merged)
    cfg._ignored_keys = merged.ignored
    cfg._sources = tuple(sources)
    cfg._hf_id = merged.meta.get("hf_id")
    unused = _unused_optimizer_params(cfg, merged)
    if merged.ignored or unused:
        names = ", ".join([*merged.ignored, *unused])
        plural = "s" if len(merged.ignored) + len(unused) > 1 else ""
        (warn or _default_warn)(f"ignoring GPT-NeoX key{plural} neox does not act on yet: {names}")
    return cfg


# What the optimizers neox builds read from ``optimizer.params``.
_OPTIMIZER_PARAMS = ("lr", "betas", "eps", "momentum")


def _unused_optimizer_params(cfg: NeoXConfig, m: _Merged) -> list[str]:
    """``optimizer.params`` keys no neox optimizer reads, to be named in the warning.

    DeepSpeed-optimizer options (``amsgrad``, ``bias_correction`` ...) are GPT-NeoX
    keys neox does not act on; ``weight_decay`` there would be silently lost, and
    GPT-NeoX itself refuses it, so that one is an error.
    """
    params = cfg.train.optimizer.params
    if "weight_decay" in params:
        raise ConfigError(
            "optimizer.params.weight_decay: weight decay is the top-level weight_decay key"
            + m.where(("train", "optimizer")),
            hint=f"move it: weight_decay: {params['weight_decay']}",
        )
    return [f"optimizer.params.{k}" for k in params if k not in _OPTIMIZER_PARAMS]


def dump_config(cfg: NeoXConfig, *, flat: bool = False) -> str:
    """The config as YAML that ``load_config`` reads back to an equal config.

    Sectioned by default; ``flat=True`` writes one GPT-NeoX-style mapping (field
    names are unique, so it loads the same). Ignored GPT-NeoX keys are left out:
    they change nothing, and a saved run config should load without warnings.
    """
    data = cfg.model_dump(mode="json")
    if flat:
        data = {name: value for section in data.values() for name, value in section.items()}
    return yaml.dump(data, Dumper=_YamlDumper, sort_keys=False, allow_unicode=True, width=100)


def dump_yaml(data: Any) -> str:
    """Any plain data in the same YAML style as ``dump_config`` (for ``neox config show`` blocks)."""
    return yaml.dump(data, Dumper=_YamlDumper, sort_keys=False, allow_unicode=True, width=100)


def read_config_file(path: str | Path) -> tuple[str, Mapping[Any, Any]]:
    """One config file's top-level mapping, read and checked as ``load_config`` reads each file."""
    return _read(path)
