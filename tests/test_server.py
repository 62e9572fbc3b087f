"""The server as hosts see it in-process: the tool listing (slim, cached, with output schema ids) and argument checks.

Transports are tests/test_transports.py; settings and the command line tests/test_cli.py."""

from __future__ import annotations

import json

import pytest
from mcp import Client

from server.app import build_server
from tests.conftest import connect, error_text, structured

pytestmark = pytest.mark.anyio


async def test_every_tool_is_listed_with_a_description_and_input_and_output_schemas(settings):
    async with connect(settings) as client:
        tools = (await client.list_tools()).tools
    names = {t.name for t in tools}
    assert {"generate", "jobs"} <= names
    for tool in tools:
        assert tool.description and len(tool.description) > 80, tool.name
        assert tool.output_schema and tool.output_schema.get("properties"), tool.name
        for prop, schema in tool.input_schema.get("properties", {}).items():
            assert schema.get("description"), f"{tool.name}.{prop} has no description"


async def test_each_output_schema_has_an_id_made_from_its_content_so_validators_compile_it_once(settings):
    """Validators cache a compiled schema by `$id` (the TypeScript SDK's AJV recompiled all nine on every
    tools/list without one); the id must change whenever the schema does, and `$ref`s resolve under it."""
    import hashlib

    import jsonschema

    from server.app import identified

    async with connect(settings) as client:
        tools = {t.name: t.output_schema for t in (await client.list_tools()).tools}
        again = {t.name: t.output_schema for t in (await client.list_tools(cache_mode="bypass")).tools}
    for name, schema in tools.items():
        content = {key: value for key, value in schema.items() if key != "$id"}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
        assert schema["$id"] == f"urn:limner:schema:{name}:output:{digest}" == again[name]["$id"]
    assert len({schema["$id"] for schema in tools.values()}) == len(tools)
    changed = json.loads(json.dumps(tools["jobs"]))
    changed.pop("$id")
    changed["required"] = [*changed.get("required", []), "extra"]
    assert identified("jobs", changed)["$id"] != tools["jobs"]["$id"]

    validator = jsonschema.Draft202012Validator(tools["judge"])  # its judgements were `$ref`s, now inline
    judgement = {"index": 0, "width": 8, "height": 8, "verdict": "pass", "overall": 0.5, "items": []}
    assert validator.is_valid({"status": "done", "judgements": [judgement]})
    assert not validator.is_valid({"status": "done", "judgements": [{**judgement, "verdict": "maybe"}]})


async def test_unknown_arguments_and_wrong_types_are_one_line_per_field_errors_for_every_tool(settings):
    """The SDK drops an argument a tool does not take without a word (judge with `orignal` judged without an
    original and passed) and reports a wrong type as pydantic's multi-line dump; here both are tool errors
    naming the field, with what was sent, and nothing runs."""
    cases = [
        ("judge", {"image": "img_0000000000000000", "orignal": "img_0000000000000000"},
         "unknown argument 'orignal' (did you mean 'original'?); judge takes: "),
        ("generate", {"prompt": "a kite", "num_candidates": 3}, "unknown argument 'num_candidates'"),
        ("remember", {"text": "a fact", "kind": "fact", "tag": ["logo"], "colour": "red"},
         "unknown arguments 'tag' (did you mean 'tags'?), 'colour'"),
        ("recall", {"query": "kite", "k": 0}, "k: input should be greater than or equal to 1 (got 0)."),
        ("remember", {"text": "a fact", "kind": "Fact"}, "kind: input should be 'fact', "),
        ("refine_region", {"image": "img_0000000000000000", "prompt": "", "bbox": [1, 2, 3]}, "bbox: "),
        ("generate", {"prompt": "a kite", "width": "wide"}, "width: input should be a valid integer"),
        ("generate", {}, "prompt: required; pass it."),
        ("jobs", {"action": "list", "extra": 1}, "unknown argument 'extra'; jobs takes: "),
    ]  # fmt: skip
    async with connect(settings) as client:
        listed = {t.name: t.input_schema for t in (await client.list_tools()).tools}
        assert all(schema["additionalProperties"] is False for schema in listed.values())
        for tool, arguments, expected in cases:
            text = error_text(await client.call_tool(tool, arguments))
            assert text.startswith(f"Error executing tool {tool}: ") and expected in text, (tool, text)
            assert "\n" not in text and "pydantic" not in text and "validation error" not in text, text
        assert structured(await client.call_tool("recall", {"query": "a fact"}))["memories"] == []
        assert structured(await client.call_tool("jobs", {"action": "list"}))["jobs"] == []


async def test_the_listing_leaves_out_generated_titles_but_keeps_fields_named_title(settings):
    def titles(node, properties=False):
        if isinstance(node, dict):
            own = 0 if properties else int(isinstance(node.get("title"), str))
            return own + sum(titles(v, k == "properties") for k, v in node.items())
        return sum(titles(v) for v in node) if isinstance(node, list) else 0

    async with connect(settings) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert sum(titles(t.input_schema) + titles(t.output_schema) for t in tools.values()) == 0
        result_schema = tools["search"].output_schema["properties"]["results"]["items"]  # a SearchHit
        assert result_schema["properties"]["title"]["type"] == "string"
        # the arguments are still checked against the full model: a wrong type is a clear error
        bad = await client.call_tool("recall", {"query": "x", "k": "many"})
        assert bad.is_error and "k" in bad.content[0].text


async def test_every_listed_schema_is_self_contained_with_no_ref_for_hosts_that_cannot_resolve_one(settings):
    async with connect(settings) as client:
        tools = (await client.list_tools()).tools
    for tool in tools:
        for schema in (tool.input_schema, tool.output_schema):
            text = json.dumps(schema)
            assert '"$ref"' not in text and '"$defs"' not in text, tool.name
        # a nullable field, a model's too, is one schema typed [T, "null"], not an anyOf with null
        assert '"anyOf"' not in json.dumps(tool.output_schema), tool.name


def test_inline_refs_keeps_descriptions_beside_a_definition_and_leaves_a_recursive_schema_as_it_is():
    from server.app import inline_refs

    schema = {
        "type": "object",
        "properties": {
            "box": {"$ref": "#/$defs/Box", "description": "where"},
            "default": {"$ref": "#/$defs/Box"},  # a property named like a keyword is still a schema
            "boxes": {"type": "array", "items": {"$ref": "#/$defs/Box"}},
        },
        "$defs": {"Box": {"type": "array", "items": {"type": "integer"}, "default": {"$ref": "data"}}},
    }
    box = {"type": "array", "items": {"type": "integer"}, "default": {"$ref": "data"}}  # data stays data
    assert inline_refs(schema) == {
        "type": "object",
        "properties": {
            "box": {**box, "description": "where"},
            "default": box,
            "boxes": {"type": "array", "items": box},
        },
    }
    tree = {
        "$ref": "#/$defs/Node",
        "$defs": {"Node": {"type": "object", "properties": {"kids": {"items": {"$ref": "#/$defs/Node"}}}}},
    }
    assert inline_refs(tree) is tree


def test_slim_strips_titles_and_null_defaults_only_never_data_or_property_names():
    from server.app import slim

    schema = {
        "title": "Args",
        "properties": {
            "title": {"title": "Title", "type": "string", "default": {"title": "kept: data"}},
            "default": {"title": "Default", "type": "integer", "enum": [{"title": "kept: data"}]},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        },
        "$defs": {"title": {"title": "Title", "type": "object", "properties": {}}},
        "examples": [{"title": "kept: data", "default": None}],
    }
    assert slim(schema) == {
        "properties": {
            "title": {"type": "string", "default": {"title": "kept: data"}},
            "default": {"type": "integer", "enum": [{"title": "kept: data"}]},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "$defs": {"title": {"type": "object", "properties": {}}},
        "examples": [{"title": "kept: data", "default": None}],
    }


def test_folding_nullable_schemas_accepts_and_refuses_exactly_the_same_values():
    from jsonschema import Draft202012Validator

    from server.app import slim

    R = {"properties": {"x": {"type": "integer"}}, "required": ["x"]}
    schema = {
        "type": "object",
        "properties": {
            "word": {"anyOf": [{"type": "string", "minLength": 2}, {"type": "null"}], "description": "d"},
            "status": {"anyOf": [{"type": "string", "enum": ["a", "b"]}, {"type": "null"}]},
            "sizes": {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "null"}]},
            "ref": {"anyOf": [{"$ref": "#/$defs/R"}, {"type": "null"}]},  # left alone: a $ref
            "fixed": {"anyOf": [{"const": 3, "type": "integer"}, {"type": "null"}]},  # left alone: const
            "model": {  # a nullable model field once inlined: its own description wins over the model's
                "anyOf": [{"type": "object", "description": "a model", **R}, {"type": "null"}],
                "description": "the field",
            },
        },
        "$defs": {"R": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
    }
    folded = slim(schema, fold_nullable=True)
    assert folded["properties"]["word"] == {"type": ["string", "null"], "minLength": 2, "description": "d"}
    assert folded["properties"]["status"] == {"type": ["string", "null"], "enum": ["a", "b", None]}
    assert folded["properties"]["ref"] == schema["properties"]["ref"]
    assert folded["properties"]["fixed"] == schema["properties"]["fixed"]
    assert folded["properties"]["model"] == {"type": ["object", "null"], **R, "description": "the field"}
    values = [None, "", "x", "xy", "a", "c", 5, 3, [], [1, 2], [1, "2"], {"x": 1}, {"y": 1}, {}, True]
    for key in schema["properties"]:
        for value in values:
            before = Draft202012Validator(schema).is_valid({key: value})
            assert Draft202012Validator(folded).is_valid({key: value}) == before, (key, value)


def test_an_argument_whose_default_is_none_is_listed_as_one_to_leave_out():
    from jsonschema import Draft202012Validator

    from server.app import slim

    nullable = [{"type": "string", "minLength": 2}, {"type": "null"}]
    schema = {
        "type": "object",
        "properties": {
            "word": {"anyOf": nullable, "default": None, "description": "d"},
            "ref": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/R"}], "default": None},
            "needed": {"anyOf": nullable},  # required: null is an answer the caller must give
            "auto": {"anyOf": nullable, "default": "ab"},  # null would not mean the default here
            "clash": {
                "anyOf": [{"type": "string", "description": "x"}, {"type": "null"}],
                "default": None,
                "description": "d",
            },
            "nested": {"type": "object", "properties": {"inner": {"anyOf": nullable, "default": None}}},
        },
        "required": ["needed"],
        "$defs": {"R": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
    }
    listed = slim(schema, omit_null=True)["properties"]
    assert listed["word"] == {"type": "string", "minLength": 2, "description": "d"}
    assert listed["ref"] == {"$ref": "#/$defs/R"}
    assert listed["nested"]["properties"]["inner"] == {"type": "string", "minLength": 2}
    assert listed["needed"] == {"anyOf": nullable}
    assert listed["auto"] == {"anyOf": nullable, "default": "ab"}
    assert listed["clash"] == {"anyOf": schema["properties"]["clash"]["anyOf"], "description": "d"}
    assert slim(schema)["properties"]["word"] == {"anyOf": nullable, "description": "d"}  # outputs keep null
    # every value but an explicit null for a left-out argument is judged as before
    full = {**slim(schema, omit_null=True), "properties": listed}
    values = ["", "xy", 5, {"x": 1}, {"y": 1}, {"inner": "xy"}, {"inner": "x"}, [], True]
    for key in ("word", "ref", "nested"):
        for value in values:
            before = Draft202012Validator(schema).is_valid({"needed": "ab", key: value})
            assert Draft202012Validator(full).is_valid({"needed": "ab", key: value}) == before, (key, value)


async def test_the_listing_offers_no_null_to_send_yet_the_tools_still_take_one(settings):
    async with Client(build_server(settings)) as client:
        listing = (await client.list_tools()).tools
        jobs = next(t for t in listing if t.name == "jobs")
        assert jobs.input_schema["properties"]["job_id"]["type"] == "string"
        assert all('"null"' not in json.dumps(t.input_schema) for t in listing)
        result = await client.call_tool("jobs", {"action": "list", "job_id": None})
        assert not result.is_error and "jobs" in result.structured_content


async def test_the_listing_is_sent_from_its_cache_and_made_again_when_the_tools_change(settings):
    server = build_server(settings)
    async with Client(server) as client:
        listed = await client.list_tools()
        assert 0 < listed.ttl_ms <= 10 * 60 * 1000  # a client may reuse the listing for a while
        first = listed.tools
        again = (await client.list_tools(cache_mode="bypass")).tools  # over the wire again
        assert len(server._wire) == 1  # the second answer came from the server's cache
        assert [t.model_dump() for t in again] == [t.model_dump() for t in first]
        again[0].input_schema["properties"].clear()  # a client that changes what it got changes nothing here
        assert (await client.list_tools(cache_mode="bypass")).tools[0].input_schema == first[0].input_schema

        def sketch(prompt: str) -> str:
            """A tool added while the server runs."""
            return prompt

        server.add_tool(sketch)
        assert "sketch" in {t.name for t in (await client.list_tools(cache_mode="bypass")).tools}
        server.remove_tool("sketch")
        assert [t.name for t in (await client.list_tools(cache_mode="bypass")).tools] == [
            t.name for t in first
        ]
    async with Client(server, mode="legacy") as client:  # the 2025-11-25 protocol: its own cached answer
        assert [t.name for t in (await client.list_tools()).tools] == [t.name for t in first]
    assert len(server._wire) == 2


async def test_unknown_argument_names_come_back_few_and_cut_short_whatever_the_client_sent(settings):
    huge = {f"{'x' * 100_000}{i}": 1 for i in range(50)}
    async with connect(settings) as client:
        text = error_text(await client.call_tool("recall", {"query": "a", **huge, "kk": 2}))
        assert structured(await client.call_tool("recall", {"query": "a"}))["memories"] == []
    assert len(text) < 1000 and "(100001 characters)" in text and "and 47 more" in text
    assert "recall takes: query" in text
