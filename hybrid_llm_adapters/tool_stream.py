"""The incremental tool-call parser: streamed answer text in, content and tool-call deltas out.

It mirrors ``chat.parse_tool_calls`` (``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` blocks) and,
with tools bound, also takes a call written without the tags: a JSON object naming a bound tool anywhere in
the answer, bare or in a ```` ``` ```` fence (the 0.5B SLM drops the tags; the 1.5B cloud writes "I will use
`f`." and then the call as a fenced JSON block). ``parse_untagged_tool_calls`` runs it over a whole answer, so
streaming and a whole answer give the same content and calls. Both adapters stream through it (via
``ChatRequest``).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from .chat import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ParsedToolCall, tool_call_from

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')


_STR = r'"((?:[^"\\]|\\.)*)"'
_FIRST_KEY = re.compile(r"\s*\{\s*" + _STR)
_AFTER_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*(\S)')
_AFTER_NAME_VALUE = re.compile(r'\s*\{\s*"name"\s*:\s*' + _STR + r"\s*(\S)")
_SECOND_KEY = re.compile(r'\s*\{\s*"name"\s*:\s*"(?:[^"\\]|\\.)*"\s*,\s*' + _STR)
_OBJECT_START = re.compile(r"\s*\{\s*(\S)")
FENCE = "```"
_FENCE_OPEN = re.compile(r"```[\w+-]*[ \t]*\n\s*")
_MAX_UNTAGGED_CALL = 4000  # characters an untagged '{' may hold back before it counts as plain text


def _head_still_possible(buf: str) -> bool:
    """Whether ``buf`` can still grow into ``{"name": "...", "arguments": `` (the streamable shape)."""
    if buf.lstrip()[:1] not in ("", "{") or len(buf) > 400:
        return False
    if (m := _OBJECT_START.match(buf)) and m.group(1) != '"':  # '{' then no key: code or prose, not JSON
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
        self.untagged = False  # the current call has no <tool_call> tag (only calls naming a bound tool count)
        self.fence = ""  # the ``` line opening the current untagged call, if any
        self.buf = ""
        self.calls = 0
        self.pending_ws = ""
        self.emitted_text = False
        self.separator = ""  # put between text before an untagged call and text after it
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
        if self.mode in ("head", "whole"):  # a call cut off: release it if its JSON is complete
            self.mode = "whole"
            self._step_whole(out)
            if self.untagged and self.mode == "whole":  # an untagged '{' whose JSON never completed: text
                self._text(out, self.fence + self.buf)
                self.buf, self.mode = "", "text"
        if self.mode == "text":
            self._text(out, self.buf)
            if self.pending_ws and not self.calls and self.emitted_text:
                out.append(Delta(text=self.pending_ws))
        self.buf = self.pending_ws = ""
        return out

    def _text(self, out: list[Delta], text: str) -> None:
        stripped = text.rstrip()
        if not stripped:
            self.pending_ws += text
            return
        lead = self.pending_ws
        if not self.emitted_text and self.calls:
            lead, stripped = self.separator, stripped.lstrip()
        out.append(Delta(text=lead + stripped))
        self.emitted_text = True
        self.pending_ws = text[len(text.rstrip()):]

    def _step_text(self, out: list[Delta]) -> bool:
        start = self.buf.find(TOOL_CALL_OPEN)
        untagged = self._untagged_start()
        if untagged >= 0 and (start < 0 or untagged < start):
            self._text(out, self.buf[:untagged])
            self.buf = self.buf[untagged:]
            return self._open_untagged(out)
        if start >= 0:
            self._text(out, self.buf[:start])
            self.buf = self.buf[start + len(TOOL_CALL_OPEN):]
            self.mode = "head"
            return True
        keep = _held_prefix(self.buf, TOOL_CALL_OPEN)
        if self.tool_names:
            keep = max(keep, _held_prefix(self.buf, FENCE))
        self._text(out, self.buf[: len(self.buf) - keep])
        self.buf = self.buf[len(self.buf) - keep:]
        return False

    def _untagged_start(self) -> int:
        """Where an untagged call may open: the first '{' or ``` (only with tools bound)."""
        if not self.tool_names:
            return -1
        found = [i for i in (self.buf.find("{"), self.buf.find(FENCE)) if i >= 0]
        return min(found, default=-1)

    def _open_untagged(self, out: list[Delta]) -> bool:
        """``buf`` starts with '{' or a fence: enter the call's head, or release the fence as text."""
        if self.buf.startswith("{"):
            self.untagged, self.fence, self.mode = True, "", "head"
            return True
        m = _FENCE_OPEN.match(self.buf)
        if m is None or m.end() == len(self.buf):
            if m is None and ("\n" in self.buf or len(self.buf) > 40):  # a fence, not one opening a block
                self._text(out, FENCE)
                self.buf = self.buf[len(FENCE):]
                return True
            return False  # wait for the fence's line and what follows it
        if self.buf[m.end()] != "{":  # a code block, not a call
            self._text(out, self.buf[:m.end()])
            self.buf = self.buf[m.end():]
            return True
        self.fence, self.buf = self.buf[:m.end()], self.buf[m.end():]
        self.untagged, self.mode = True, "head"
        return True

    def _step_head(self, out: list[Delta]) -> bool:
        m = _HEAD.match(self.buf)
        if m is None:
            if not _head_still_possible(self.buf):  # another shape: release the call whole
                if self.untagged:  # untagged, only the streamable shape counts (JSON answers keep streaming)
                    return self._not_a_call(out)
                self.mode = "whole"
                return True
            return False
        if self.untagged and json.loads(f'"{m.group(1)}"') not in self.tool_names:
            return self._not_a_call(out)
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
            self._call_done()
        return done

    def _call_done(self) -> None:
        self.calls += 1
        self.separator = "\n\n" if self.untagged and self.emitted_text else ""
        self.emitted_text = False
        self.pending_ws = ""
        self.mode = "tail"

    def _step_tail(self, out: list[Delta]) -> bool:
        """After the arguments: skip the call object's '}' and the closing '</tool_call>' or fence."""
        s = self.buf.lstrip()
        if s.startswith("}"):
            s = s[1:].lstrip()
        closer = FENCE if self.fence else TOOL_CALL_CLOSE
        if not s or (closer.startswith(s) and s != closer):
            self.buf = s
            return False
        self.buf = s.removeprefix(closer)
        self.mode, self.untagged, self.fence = "text", False, ""
        return True

    def _not_a_call(self, out: list[Delta]) -> bool:
        """An untagged '{' that is no tool call: its fence and '{' are plain text; scanning goes on after it."""
        self._text(out, self.fence + self.buf[:1])
        self.buf = self.buf[1:]
        self.untagged, self.fence, self.mode = False, "", "text"
        return True

    def _step_whole(self, out: list[Delta]) -> bool:
        start = self.buf.find("{")
        if start < 0:
            return False
        try:
            obj, end = json.JSONDecoder().raw_decode(self.buf, start)
        except json.JSONDecodeError:
            if self.untagged and len(self.buf) > _MAX_UNTAGGED_CALL:
                return self._not_a_call(out)
            return False
        if self.untagged and (not isinstance(obj, dict) or obj.get("name") not in self.tool_names):
            return self._not_a_call(out)
        self.buf = self.buf[end:]
        if isinstance(obj, dict) and "name" in obj:
            call = tool_call_from(obj)
            out.append(Delta(index=self.calls, id=_new_id(), name=call.name,
                             args=json.dumps(call.arguments, ensure_ascii=False)))
            self._call_done()
        self.mode = "tail"
        return True


def parse_untagged_tool_calls(text: str, tool_names: list[str]) -> tuple[str, list[ParsedToolCall]]:
    """Content and calls of a whole answer whose calls lack the ``<tool_call>`` tags: JSON objects naming a
    bound tool, bare or fenced, anywhere in the text (the streaming parser run once over all of it)."""
    parser = ToolCallStreamParser(tool_names)
    deltas = parser.feed(text) + parser.flush()
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        if d.index is not None:
            c = calls.setdefault(d.index, {"name": "", "args": ""})
            c["name"] += d.name or ""
            c["args"] += d.args or ""
    parsed = [tool_call_from({"name": c["name"], "arguments": c["args"]}) for c in calls.values()]
    return "".join(d.text for d in deltas if d.index is None), parsed
