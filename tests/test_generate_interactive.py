"""`neox generate --interactive` driven through a real pseudo-terminal, as a person types."""

from __future__ import annotations

import codecs
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from neoxcli.checkpoint import write_checkpoint  # noqa: E402
from neoxcli.config.schema import ModelConfig, NeoXConfig, TokenizerConfig  # noqa: E402
from neoxcli.generation.interactive import apply_command, read_prompt  # noqa: E402
from neoxcli.generation.session import SamplingOptions  # noqa: E402
from neoxcli.model import GPTModel  # noqa: E402


def _checkpoint(root: Path) -> Path:
    from neoxcli.data.tokenizer import CharLevelTokenizer

    cfg = NeoXConfig(
        model=ModelConfig(num_layers=1, hidden_size=32, num_attention_heads=4, seq_length=64),
        tokenizer=TokenizerConfig(tokenizer_type="CharLevelTokenizer"),
    )
    vocab = CharLevelTokenizer().vocab_size
    padded = -(-vocab // cfg.model.make_vocab_size_divisible_by) * cfg.model.make_vocab_size_divisible_by
    torch.manual_seed(0)
    write_checkpoint(root, cfg, GPTModel(cfg.model, padded).state_dict())
    return root


class Terminal:
    """A child process on a pty: ``send`` types, ``expect`` waits for text on the screen."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.screen = ""
        self._decode = codecs.getincrementaldecoder("utf-8")(
            "replace"
        ).decode  # a character may span two reads
        self.prompts_seen = 0

    def expect(self, text: str, timeout: float = 60.0) -> str:
        end = time.monotonic() + timeout
        while text not in self.screen:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} never appeared; screen:\n{self.screen}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.screen += self._decode(os.read(self.master, 4096))
                except OSError:
                    break
        return self.screen

    def next_prompt(self, mark: str = "> ", timeout: float = 60.0) -> str:
        """Wait for one more ``mark`` than seen so far: the session is ready for the next line."""
        end = time.monotonic() + timeout
        while self.screen.count(mark) <= self.prompts_seen:
            self._read_more(end)
        self.prompts_seen = self.screen.count(mark)
        return self.screen

    def _read_more(self, end: float) -> None:
        ready, _, _ = select.select([self.master], [], [], max(end - time.monotonic(), 0.01))
        if not ready:
            raise AssertionError(f"no new prompt; screen:\n{self.screen}")
        self.screen += self._decode(os.read(self.master, 4096))

    def send(self, data: str) -> None:
        os.write(self.master, data.encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.master)


@pytest.mark.slow
def test_interactive_session_in_a_terminal(tmp_path: Path) -> None:
    run = _checkpoint(tmp_path / "run")
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "TERM": "dumb", "NEOX_DEBUG": "0"}
    argv = [
        sys.executable,
        "-m",
        "neoxcli",
        "generate",
        "-c",
        str(run),
        "-i",
        "--greedy",
        "--max-new-tokens",
        "5",
    ]
    term = Terminal(argv, env)
    try:
        term.expect("/help for commands")
        term.next_prompt()
        term.send("/set temperature 0.5\r")
        assert "temperature = 0.5" in term.next_prompt()
        term.send("/show\r")
        assert "temperature=0.5" in term.next_prompt()
        term.send("/reset\r")
        assert "settings reset" in term.next_prompt()
        term.send("ab\\\r")
        term.expect("… ")
        term.send("cd\r")
        screen = term.next_prompt()
        assert "ab\r\ncd" in screen  # the prompt's two lines, then its continuation
        assert "Traceback" not in screen
        term.send("\x04")  # Ctrl-D
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert (tmp_path / "data" / "neox" / "history").is_file()


def test_commands_and_continued_lines() -> None:
    start = SamplingOptions(temperature=1.0)
    opts, msg = apply_command("/set temperature 0.7", start, start)
    assert opts.temperature == 0.7 and msg == "temperature = 0.7"
    assert apply_command("/set top_p 2", opts, start)[1] == "top_p must be in (0, 1]"
    assert apply_command("/set nope 1", opts, start)[0] is opts
    assert apply_command("/reset", opts, start)[0] is start
    assert "unknown command" in apply_command("/frobnicate", opts, start)[1]
    lines = iter(["first\\", "second\\", "third"])
    assert read_prompt(lambda _p: next(lines)) == "first\nsecond\nthird"


def test_ctrl_c_stops_one_generation_not_the_session(capsys: pytest.CaptureFixture[str]) -> None:
    from neoxcli.generation.interactive import interact

    prompts = iter(["one", "two"])
    calls = []

    def read_line(_prompt: str) -> str:
        try:
            return next(prompts)
        except StopIteration:
            raise EOFError from None

    def complete(model, tokenizer, text, options, seed, *, stream):  # noqa: ANN001
        calls.append(text)
        if text == "one":
            raise KeyboardInterrupt
        return " done"

    interact(None, None, SamplingOptions(), complete, read_line=read_line)
    assert calls == ["one", "two"]
    assert "[generation stopped]" in capsys.readouterr().err
