"""The incremental tool-call parser: streamed answer text in, content and tool-call deltas out.

It mirrors ``chat.parse_tool_calls`` (``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` blocks, and a
bare call at the start of the answer) so that streaming and a whole answer give the same tool calls. Both
adapters stream through it (via ``ChatRequest``).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from .chat import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, tool_call_from

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')


_STR = r'"((?:[^"\\]|\\.)*)"'
_FIRST_KEY = re.compile(r"\s*\{\s*" + _STR)
_AFTER_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*(\S)')
_AFTER_NAME_VALUE = re.compile(r'\s*\{\s*"name"\s*:\s*' + _STR + r"\s*(\S)")
_SECOND_KEY = re.compile(r'\s*\{\s*"name"\s*:\s*"(?:[^"\\]|\\.)*"\s*,\s*' + _STR)


def _head_still_possible(buf: str) -> bool:
    """Whether ``buf`` can still grow into ``{"name": "...", "arguments": `` (the streamable shape)."""
    if buf.lstrip()[:1] not in ("", "{") or len(buf) > 400:
        return False
    if (m := _FIRST_KEY.match(buf)) and m.group(1) != "name":
        return False
    if (m := _AFTER_NAME.match(buf)) and m.group(1) != '"':
        return False
    if (m := _AFTER_NAME_VALUE.match(buf)) and m.group(2) != ",":
        return False
    m = _SECOND_KEY.match(buf)
    return m is None or m.group(1) in ("arguments", "parameters")


@dataclass
class Delta:
    """A piece of streamed output: plain text, or part of tool call ``index``."""

    text: str = ""
    index: int | None = None
    id: str | None = None
    name: str | None = None
    args: str | None = None


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _held_prefix(buf: str, marker: str) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of ``marker``."""
    for k in range(min(len(marker) - 1, len(buf)), 0, -1):
        if buf.endswith(marker[:k]):
            return k
    return 0


class ToolCallStreamParser:
    """Turns streamed answer text into content deltas and tool-call deltas as the text arrives.

    A call's name is released once its head ``{"name": "...", "arguments": {`` is complete, then the
    arguments JSON is released character-exactly as it streams (one ``tool_call_chunk`` piece per token).
    A call in any other shape (other key order, arguments as a JSON string) is released whole once its
    JSON object is complete. Whitespace next to tool calls is held back, so the streamed content matches
    the core's ``parse_tool_calls`` (what ``invoke`` returns).
    """

    def __init__(self, tool_names: list[str] | None = None) -> None:
        self.mode = "text"  # text | head | args | tail | whole
        self.tool_names = list(tool_names or [])
        self.bare = False  # the current call has no <tool_call> tag (see the core's parse_bare_tool_call)
        self.bare_possible = bool(self.tool_names)  # only at the very start of the answer
        self.buf = ""
        self.calls = 0
        self.pending_ws = ""
        self.emitted_text = False
        self._depth = 0
        self._in_str = False
        self._esc = False

    def feed(self, text: str) -> list[Delta]:
        self.buf += text
        out: list[Delta] = []
        while self.buf and getattr(self, f"_step_{self.mode}")(out):
            pass
        return out

    def flush(self) -> list[Delta]:
        """Release what is held at the end of the answer."""
        out: list[Delta] = []
        if self.mode == "text":
            self._text(out, self.buf)
            if self.pending_ws and not self.calls and self.emitted_text:
                out.append(Delta(text=self.pending_ws))
        elif self.mode in ("head", "whole"):  # a call cut off: release it if its JSON is complete
            self.mode = "whole"
            self._step_whole(out)
            if self.bare and self.mode == "whole":  # a bare '{' whose JSON never completed: text
                self._not_a_call()
            if self.mode == "text" and self.buf:  # a bare '{' that was no call
                self._text(out, self.buf)
        self.buf = self.pending_ws = ""
        return out

    def _text(self, out: list[Delta], text: str) -> None:
        stripped = text.rstrip()
        if not stripped:
            self.pending_ws += text
            return
        lead = self.pending_ws
        if not self.emitted_text and self.calls:
            lead, stripped = "", stripped.lstrip()
        out.append(Delta(text=lead + stripped))
        self.emitted_text = True
        self.pending_ws = text[len(text.rstrip()):]

    def _step_text(self, out: list[Delta]) -> bool:
        if self.bare_possible:
            head = self.buf.lstrip()
            if not head:
                return False
            self.bare_possible = False
            if head.startswith("{"):
                self.bare, self.mode = True, "head"
                return True
        start = self.buf.find(TOOL_CALL_OPEN)
        if start >= 0:
            self._text(out, self.buf[:start])
            self.buf = self.buf[start + len(TOOL_CALL_OPEN):]
            self.mode = "head"
            return True
        keep = _held_prefix(self.buf, TOOL_CALL_OPEN)
        self._text(out, self.buf[: len(self.buf) - keep])
        self.buf = self.buf[len(self.buf) - keep:]
        return False

    def _step_head(self, out: list[Delta]) -> bool:
        m = _HEAD.match(self.buf)
        if m is None:
            if not _head_still_possible(self.buf):  # another shape: release the call whole
                self.mode = "whole"
                return True
            return False
        if self.bare and json.loads(f'"{m.group(1)}"') not in self.tool_names:
            return self._not_a_call()
        if m.end() == len(self.buf):
            return False  # wait for the first character of the arguments
        if self.buf[m.end()] != "{":
            self.mode = "whole"
            return True
        try:
            name = json.loads(f'"{m.group(1)}"')
        except json.JSONDecodeError:
            name = m.group(1)
        out.append(Delta(index=self.calls, id=_new_id(), name=name, args=""))
        self.buf = self.buf[m.end():]
        self.mode = "args"
        self._depth, self._in_str, self._esc = 0, False, False
        return True

    def _step_args(self, out: list[Delta]) -> bool:
        taken, done = 0, False
        for ch in self.buf:
            taken += 1
            if self._in_str:
                if self._esc:
                    self._esc = False
                elif ch == "\\":
                    self._esc = True
                elif ch == '"':
                    self._in_str = False
            elif ch == '"':
                self._in_str = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    done = True
                    break
        out.append(Delta(index=self.calls, args=self.buf[:taken]))
        self.buf = self.buf[taken:]
        if done:
            self.calls += 1
            self.emitted_text = False
            self.pending_ws = ""
            self.mode = "tail"
        return done

    def _step_tail(self, out: list[Delta]) -> bool:
        """After the arguments: skip the call object's '}' and the optional '</tool_call>'."""
        s = self.buf.lstrip()
        if s.startswith("}"):
            s = s[1:].lstrip()
        if not s or (TOOL_CALL_CLOSE.startswith(s) and s != TOOL_CALL_CLOSE):
            self.buf = s
            return False
        s = s.removeprefix(TOOL_CALL_CLOSE)
        self.buf = s
        self.mode = "text"
        return True

    def _not_a_call(self) -> bool:
        """A bare '{' answer that is no tool call: it is plain text after all."""
        self.bare, self.mode = False, "text"
        self.buf = self.buf.lstrip()
        self.emitted_text = True  # keep its text as it is
        return True

    def _step_whole(self, out: list[Delta]) -> bool:
        start = self.buf.find("{")
        if start < 0:
            return False
        try:
            obj, end = json.JSONDecoder().raw_decode(self.buf, start)
        except json.JSONDecodeError:
            return False
        if self.bare and (not isinstance(obj, dict) or obj.get("name") not in self.tool_names):
            return self._not_a_call()
        if isinstance(obj, dict) and "name" in obj:
            call = tool_call_from(obj)
            out.append(Delta(index=self.calls, id=_new_id(), name=call.name,
                             args=json.dumps(call.arguments, ensure_ascii=False)))
            self.calls += 1
            self.emitted_text = False
            self.pending_ws = ""
        self.buf = self.buf[end:]
        self.mode = "tail"
        return True
