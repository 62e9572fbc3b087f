"""The prompts name only real tools and real arguments: every `tool(arg=...)` in their text is checked against
the input schema the server lists for that tool, so a renamed or invented argument fails here."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import connect

pytestmark = pytest.mark.anyio

CALL = re.compile(r"\b([a-z_]+)\(")
ARGUMENT = re.compile(r"(?<![\w.])([a-z_]+)=(?!=)")


def calls(text: str) -> list[tuple[str, list[str]]]:
    """Each `name(...)` in the text with the argument names written at its own level (not inside a nested
    list, dict or call): ("refine_region", ["image", "region", "prompt"])."""
    found = []
    for match in CALL.finditer(text):
        depth, start, end = 0, match.end(), None
        for i in range(start, len(text)):
            if text[i] in "([{":
                depth += 1
            elif text[i] in ")]}":
                if depth == 0:
                    end = i
                    break
                depth -= 1
        assert end is not None, f"unclosed call in the prompt: {text[match.start() : match.start() + 80]!r}"
        inner, level, flat = text[start:end], 0, []
        for ch in inner:  # blank out what nested brackets hold, so their `k=` are not this call's arguments
            level += ch in "([{"
            flat.append(ch if level == 0 else " ")
            level -= ch in ")]}"
        found.append((match.group(1), ARGUMENT.findall("".join(flat))))
    return found


def test_the_call_reader_finds_arguments_at_the_calls_own_level_only():
    text = 'then refine_region(image=best_id, bbox=next_step.bbox or mask=next_step.mask, expect=[{"a": 1}], x=f(y=2))'
    assert calls(text) == [("refine_region", ["image", "bbox", "mask", "expect", "x"]), ("f", ["y"])]


async def rendered(client: Any) -> dict[str, str]:
    gap = await client.get_prompt(
        "close_context_gap", {"request": "a poster with two red apples", "constraints": "A3 portrait"}
    )
    scene = await client.get_prompt(
        "product_scene",
        {"product_image": "img_0123456789abcdef", "scene": "on a marble counter", "product": "Acme kettle"},
    )
    return {
        "close_context_gap": gap.messages[0].content.text,
        "product_scene": scene.messages[0].content.text,
    }


async def test_every_tool_call_in_the_prompts_names_a_real_tool_and_only_its_real_arguments(settings):
    async with connect(settings) as client:
        schemas = {
            t.name: set(t.input_schema.get("properties", {})) for t in (await client.list_tools()).tools
        }
        texts = await rendered(client)
    for prompt, text in texts.items():
        mentioned = calls(text)
        assert mentioned, prompt
        for tool, arguments in mentioned:
            assert tool in schemas, f"{prompt} names a tool the server does not have: {tool}()"
            unknown = set(arguments) - schemas[tool]
            assert not unknown, (
                f"{prompt}: {tool}() has no argument {sorted(unknown)}; it takes {sorted(schemas[tool])}"
            )
        named = {tool: set() for tool, _ in mentioned}
        for tool, arguments in mentioned:
            named[tool] |= set(arguments)
        # judge's failing item -> locate the object -> refine_region with its mask or its name
        assert {"objects", "image"} <= named["locate"], prompt
        assert {"mask", "region", "image", "prompt"} <= named["refine_region"], prompt
        assert "expect" in named["judge"], prompt
        assert "instance=<k>" in text and "located" in text, prompt


async def test_the_prompts_expect_examples_are_entries_judge_accepts(settings):
    """The `expect` entries the prompts show, as written (with the product's name), pass judge's own schema."""
    async with connect(settings) as client:
        texts = await rendered(client)
        judge = next(t for t in (await client.list_tools()).tools if t.name == "judge")
    entry = judge.input_schema["properties"]["expect"]["items"]  # an Expectation
    keys = set(entry["properties"])
    for prompt, text in texts.items():
        shown = re.findall(r'\{"object": [^{}]*\}', text)
        assert shown, prompt
        for example in shown:
            used = set(re.findall(r'"([a-z_]+)":', example))
            assert used <= keys, f"{prompt}: {example} uses keys judge's expect does not take"
