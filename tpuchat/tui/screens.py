"""Modal screens: help, model picker, device picker, settings, small prompts."""

import os
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, DirectoryTree, Input, Label, SelectionList, Static, Switch, TextArea

from .. import config as cfg
from .commands import help_rows

KEYS = [
    ("Enter", "send the message"),
    ("Ctrl+J / Shift+Enter", "new line in the message"),
    ("Up / Down", "earlier / later prompts (on the first / last line)"),
    ("Esc", "stop the answer (what was produced is kept, marked stopped)"),
    ("Ctrl+R", "retry: answer the last message again"),
    ("Ctrl+E", "edit the last message (it and its answer go back to the input)"),
    ("Ctrl+Y", "copy the last answer (OSC 52, works over SSH)"),
    ("Ctrl+N", "new conversation"),
    ("Ctrl+B", "show / hide the conversation list"),
    ("n / r / d", "in the list: new / rename / delete"),
    ("F2 or Ctrl+O", "pick a model"),
    ("F3", "pick devices"),
    ("F4", "settings: system prompt, sampling, max tokens"),
    ("F5", "attach an image (vision models)"),
    ("Ctrl+P", "command palette"),
    ("F1", "this help"),
    ("Ctrl+Q", "quit"),
]

COMMANDS = help_rows()  # (usage, help) of every slash command, from commands.COMMANDS


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return str(n)


class HelpScreen(ModalScreen):
    BINDINGS = [("escape", "dismiss", "Close"), ("f1", "dismiss", "Close"), ("q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        rows = ["[b]Keys[/b]"] + [f"  [b $accent]{escape(k):<22}[/] {escape(v)}" for k, v in KEYS]
        rows += ["", "[b]Commands[/b] (type them in the input)"]
        rows += [f"  [b $accent]{escape(k):<24}[/] {escape(v)}" for k, v in COMMANDS]
        with Vertical(id="help-box", classes="dialog"):
            yield Label("tpuchat help", classes="dialog-title")
            with VerticalScroll():
                yield Static("\n".join(rows), id="help-text")
            yield Label("Esc closes", classes="dialog-hint")


class TextPrompt(ModalScreen):
    """Ask for one line of text (rename)."""

    BINDINGS = [("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str = ""):
        super().__init__()
        self._title, self._value = title, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog small"):
            yield Label(self._title, classes="dialog-title")
            yield Input(self._value, id="prompt-input")

    @on(Input.Submitted)
    def _done(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class Confirm(ModalScreen):
    BINDINGS = [("escape", "no", "No"), ("n", "no", "No"), ("y", "yes", "Yes")]

    def __init__(self, question: str):
        super().__init__()
        self._q = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog small"):
            yield Label(self._q, classes="dialog-title")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)


def vocab_text(desc, tokenizer: Optional[str]) -> str:
    """A top-1 build never hands the logits to the host, so the shim cannot see
    the vocabulary: take it from the model's config.json, else say n/a."""
    if desc.vocab_size:
        return str(desc.vocab_size)
    if tokenizer:
        try:
            import json

            n = json.loads((Path(tokenizer) / "config.json").read_text()).get("vocab_size")
            if isinstance(n, int) and n > 0:
                return f"{n} (config.json)"
        except (OSError, ValueError, AttributeError):
            pass
    return "n/a"


def describe_lines(desc, tokenizer: Optional[str]) -> str:
    devs = desc.num_device
    lines = [
        f"[b]{escape(desc.name)}[/b]",
        f"quantisation [b]{escape(str(desc.quantization))}[/b] · dtype {desc.dtype} · "
        f"{desc.num_layers} layers · hidden {desc.hidden_size}",
        f"prefill S [b]{desc.seq_len}[/b] · KV L [b]{desc.kv_len}[/b] · "
        f"{'dynamic' if desc.dynamic else 'static'} · vocab {vocab_text(desc, tokenizer)}",
        f"needs [b]{devs}[/b] device{'s' if devs != 1 else ''} · lm_head {desc.lm_head}"
        + (" · can sample" if desc.can_sample else " · greedy only"),
        f"size {human_size(desc.file_size)} · toolchain {escape(str(desc.toolchain or '?'))}",
    ] + ([f"vision: images as {desc.vision_tiles} tiles of {desc.image_size} px"]
         if desc.has_vision else []) + [
        ("tokenizer: [green]" + escape(tokenizer) + "[/]") if tokenizer else "tokenizer: [red]not found[/] "
        "(put it in config/ beside the bmodel or pass --tokenizer)",
    ]
    return "\n".join(lines)


class ModelPicker(ModalScreen):
    """Lists .bmodel files from the current dir and the configured dirs; Enter opens one.
    Returns the chosen path, or None."""

    BINDINGS = [("escape", "cancel", "Cancel")]

    def __init__(self, backend, dirs: Sequence[str], current: Optional[str] = None):
        super().__init__()
        self.backend = backend
        self.dirs = list(dirs)
        self.current = current
        self.paths: List[str] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="model-box", classes="dialog"):
            yield Label("Pick a model", classes="dialog-title")
            yield DataTable(id="model-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="model-facts")
            yield Input(placeholder="or type a path to a .bmodel and press Enter", id="model-path")
            yield Label("Enter opens · Esc cancels · the conversation is kept", classes="dialog-hint")

    def on_mount(self) -> None:
        from .backend import find_bmodels

        t = self.query_one(DataTable)
        t.add_columns("model", "size", "tok", "dir")
        self.paths = find_bmodels(self.dirs)
        for p in self.paths:
            facts = self.backend.file_facts(p)
            tok = "✓" if self.backend.tokenizer_found(p) else "✗"
            name = Path(p).name + (" (open)" if self.current and os.path.abspath(p) == os.path.abspath(self.current) else "")
            size = "damaged" if facts["error"] else human_size(facts["size"])
            t.add_row(name, size, tok, _short_dir(p), key=p)
        if not self.paths:
            self.query_one("#model-facts", Static).update(
                "No .bmodel files found in: " + escape(", ".join(self.dirs)) +
                "\nAdd dirs with model_dirs in the config (F4 shows where), or type a path below.")
            self.query_one("#model-path", Input).focus()
        else:
            t.focus()

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        path = event.row_key.value if event.row_key is not None else None
        if path:
            self.query_one("#model-facts", Static).update(f"{escape(Path(path).name)}: reading…")
            self._describe(path)

    @work(thread=True, exclusive=True, group="describe")
    def _describe(self, path: str) -> None:
        facts = self.backend.file_facts(path)
        tok = self.backend.tokenizer_found(path)
        if facts["error"]:
            text = "[red]" + escape(facts["error"]) + "[/]"
        else:
            try:
                text = describe_lines(self.backend.describe(path), tok)
            except Exception as e:  # the runtime's one-line error
                text = (f"{escape(Path(path).name)} · {human_size(facts['size'])}\n[red]cannot read it: "
                        f"{escape(str(e))}[/]")
        self.app.call_from_thread(self._show_facts, path, text)

    def _show_facts(self, path: str, text: str) -> None:
        t = self.query_one(DataTable)
        if self.paths and t.cursor_row < len(self.paths) and self.paths[t.cursor_row] == path:
            self.query_one("#model-facts", Static).update(text)

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.dismiss(event.row_key.value)

    @on(Input.Submitted, "#model-path")
    def _typed(self, event: Input.Submitted) -> None:
        p = os.path.expanduser(event.value.strip())
        if p:
            self.dismiss(p)

    def action_cancel(self) -> None:
        self.dismiss(None)


def _short_dir(p: str) -> str:
    d = os.path.dirname(os.path.abspath(p))
    home = os.path.expanduser("~")
    if d == os.getcwd():
        return "."
    if d.startswith(home):
        d = "~" + d[len(home):]
    return d if len(d) <= 28 else "…" + d[-27:]


class DevicePicker(ModalScreen):
    """Devices with their memory; pick as many ids as the bmodel was compiled for.
    Returns the list of ids, or None."""

    BINDINGS = [("escape", "cancel", "Cancel")]

    def __init__(self, backend, model=None, needed: int = 1, current: Sequence[int] = (0,)):
        super().__init__()
        self.backend = backend
        self.model = model
        self.needed = needed
        self.current = list(current)

    def compose(self) -> ComposeResult:
        with Vertical(id="device-box", classes="dialog"):
            yield Label("Pick devices", classes="dialog-title")
            yield Static(f"This model was compiled for [b]{self.needed}[/b] device{'s' if self.needed != 1 else ''}; "
                         "Space selects, Enter uses the selection.", id="device-need")
            yield SelectionList(id="device-list")
            yield Static("reading devices…", id="device-msg")
            with Horizontal(classes="buttons"):
                yield Button("Use", id="use", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one(SelectionList).focus()
        self._load()

    @work(thread=True, exclusive=True)
    def _load(self) -> None:
        try:
            info = self.backend.devices(self.model)
            self.app.call_from_thread(self._fill, info, None)
        except Exception as e:
            self.app.call_from_thread(self._fill, None, str(e))

    def _fill(self, info: Optional[dict], error: Optional[str]) -> None:
        msg = self.query_one("#device-msg", Static)
        if error:
            msg.update(f"[red]{escape(error)}[/]")
            return
        sl = self.query_one(SelectionList)
        for d in info["devices"]:
            if d["mem_total_mb"] > 0:
                mem = f"{d['mem_used_mb']:>6} / {d['mem_total_mb']} MB used · TPU {d['tpu_util']}%"
            else:
                mem = "memory not reported" + (" (simulator)" if info.get("kind") == "simulator" else "")
            sl.add_option((f"device {d['devid']}: {mem}", d["devid"], d["devid"] in self.current))
        msg.update(f"{info['count']} device{'s' if info['count'] != 1 else ''} · runtime {escape(str(info.get('kind', '')))}")

    def _check(self) -> Optional[List[int]]:
        ids = sorted(self.query_one(SelectionList).selected)
        msg = self.query_one("#device-msg", Static)
        if len(ids) != self.needed:
            msg.update(f"[b red]Selected {len(ids)} device{'s' if len(ids) != 1 else ''}, but this bmodel was "
                       f"compiled for {self.needed}[/] (tpu-mlir --num_device {self.needed}). "
                       f"Select exactly {self.needed}.")
            return None
        return ids

    def key_enter(self) -> None:
        ids = self._check()
        if ids is not None:
            self.dismiss(ids)

    @on(Button.Pressed, "#use")
    def _use(self) -> None:
        self.key_enter()

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class SettingsScreen(ModalScreen):
    """System prompt and generation parameters.  Returns (Settings, scope) with scope
    "conversation" (this conversation only) or "default" (also saved to the TOML file), or None."""

    BINDINGS = [("escape", "cancel", "Cancel"), Binding("ctrl+s", "save('conversation')", "Save", show=False)]

    FIELDS = [
        ("max_new_tokens", "max new tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k (0 off)"),
        ("repetition_penalty", "repetition penalty (1 off)"),
        ("seed", "seed (-1 random)"),
    ]

    def __init__(self, settings: cfg.Settings, config_file: str = "", can_sample: Optional[bool] = None):
        super().__init__()
        self.settings = settings
        self.config_file = config_file
        self.can_sample = can_sample
        self._error = False  # an error is on the hint line
        self.more_below = False  # the form's end is out of view (the hint is shown)

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(id="settings-box", classes="dialog"):
            yield Label("Settings", classes="dialog-title")
            with VerticalScroll(id="settings-form"):
                yield Label("System prompt (this conversation)")
                yield TextArea(s.system_prompt, id="set-system")
                with Horizontal(classes="row"):
                    yield Label("sampling (off: greedy)", classes="field-label")
                    yield Switch(value=s.sample, id="set-sample")
                if self.can_sample is False:
                    yield Static("[yellow]this bmodel picks the top-1 token on the device: it can only be greedy[/]",
                                classes="note")
                for name, label in self.FIELDS:
                    with Horizontal(classes="row"):
                        yield Label(label, classes="field-label")
                        yield Input(str(getattr(s, name)), id=f"set-{name}", classes="field")
            # The form is cut on small terminals: this line says so until its end is in view
            # (the line errors are shown on, so the buttons stay on a 24-row screen).
            yield Static("", id="settings-error")
            with Horizontal(classes="buttons"):
                yield Button("This chat", id="conversation", variant="primary")
                yield Button("Default", id="default")
                yield Button("Cancel", id="cancel")
            if self.config_file:
                yield Label("Default saves to " + escape(self.config_file), classes="dialog-hint")

    def on_mount(self) -> None:
        form = self.query_one("#settings-form", VerticalScroll)
        self.watch(form, "scroll_y", lambda _: self._more_hint(), init=False)
        self.call_after_refresh(self._more_hint)

    def on_resize(self) -> None:
        self.call_after_refresh(self._more_hint)

    MORE = "[dim]▼ more settings below: scroll, or Tab to them[/]"

    def _more_hint(self) -> None:
        form = self.query_one("#settings-form", VerticalScroll)
        line = self.query_one("#settings-error", Static)
        if self._error:
            return
        self.more_below = form.scroll_y < form.max_scroll_y
        line.update(self.MORE if self.more_below else "")

    def _show_error(self, text: str) -> None:
        self._error = True
        self.query_one("#settings-error", Static).update(f"[b red]{escape(text)}[/]")

    def _collect(self) -> Optional[cfg.Settings]:
        try:
            values = {name: cfg.coerce(name, self.query_one(f"#set-{name}", Input).value) for name, _ in self.FIELDS}
        except ValueError as e:
            self._show_error(str(e))
            return None
        s = replace(self.settings, system_prompt=self.query_one("#set-system", TextArea).text,
                    sample=self.query_one("#set-sample", Switch).value, **values)
        problem = cfg.validate(s)
        if problem:
            self._show_error(problem)
            return None
        return s

    def action_save(self, scope: str) -> None:
        s = self._collect()
        if s is not None:
            self.dismiss((s, scope))

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
        else:
            self.action_save(event.button.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ImageTree(DirectoryTree):
    """A DirectoryTree that shows folders and image files only (hidden entries left out)."""

    def filter_paths(self, paths):
        from ..vision.image import is_image_name

        out = []
        for p in paths:
            if p.name.startswith("."):
                continue
            try:
                if p.is_dir() or is_image_name(p.name):
                    out.append(p)
            except OSError:
                continue
        return out


class ImagePicker(ModalScreen):
    """Pick an image file to attach to the next message.  Returns its path, or None."""

    BINDINGS = [("escape", "cancel", "Cancel")]

    def __init__(self, start_dir: str):
        super().__init__()
        self.start_dir = start_dir

    def compose(self) -> ComposeResult:
        with Vertical(id="image-box", classes="dialog"):
            yield Label("Attach an image", classes="dialog-title")
            yield ImageTree(self.start_dir, id="image-tree")
            yield Input(placeholder="or type a path to an image and press Enter", id="image-path")
            yield Label("Enter attaches · Esc cancels · folders and images only", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one(ImageTree).focus()

    @on(DirectoryTree.FileSelected)
    def _picked(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss(str(event.path))

    @on(Input.Submitted, "#image-path")
    def _typed(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(os.path.expanduser(event.value.strip()))

    def action_cancel(self) -> None:
        self.dismiss(None)
