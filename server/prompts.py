"""MCP prompts: the context-gap loop as messages an agent follows, written for limner's real tools.

`close_context_gap` is the general workflow (clarify, search, remember, generate candidates, judge, refine
or regenerate, judge again, remember the outcome); `product_scene` is the same loop for a product photo that
must stay pixel-faithful while a new scene is generated around it (foreground-conditioned generation).
"""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.prompts.base import Message, UserMessage
from pydantic import Field

CANDIDATES = 4
MAX_ROUNDS = 3

LOOP = f"""\
Follow this loop with limner's tools. Tool results are structured JSON; the field names below are real.

1. Clarify. Decide what the request leaves open (who/what exactly, style, size, text that must appear,
   brand or product names, dates). Ask the user only about what you cannot look up; state assumptions.
2. Recall first. Call recall(query=<the subject and the user's name or project>, k=5) and again with
   kind="preference". Use what comes back (memories[].text) and do not search again for what is known.
3. Search what the model cannot know: anything recent, niche, branded or named. search(query, kind="web")
   for facts, fetch_page(url) when a snippet is not enough, search(query, kind="images",
   download_images=true) for reference pictures (each comes back with an image id). Skip search when the
   request is generic ("a cat on a sofa").
4. Remember what you learned before you use it: remember(text, kind="fact", source=<url>) for each fact
   the prompt depends on, kind="preference" for what the user told you they like, kind="reference" with
   image=<id> for a reference picture.
5. Write one concrete prompt that spells out the facts (colours, shapes, text, layout), then
   generate(prompt, n={CANDIDATES}, seed=<any int>) for {CANDIDATES} candidates. If the result has
   status="running", call jobs(action="wait", job_id=job.job_id) until it is done. (A host with MCP tasks
   may run this call as a task instead and hand you its result when the task completes: the same fields.)
6. Judge: judge(images=[every candidates[].id], prompt=<the prompt>, questions=[short yes/no checks of
   the facts that matter], expect=[...]). Put in `expect` what the request counts, colours, places or
   excludes, in GenEval's terms: {{"object": "apple", "count": 2}}, {{"object": "apple", "color": "red"}},
   {{"object": "cup", "position": "left of", "of": "apple"}}, {{"object": "dog", "present": false}}; they are
   checked with the detector, which questions cannot do reliably. Read ranking / best_id, and each
   judgements[] entry's verdict ("pass" or "fix"), overall (0..1) and items[] (failed checks carry
   next_step; a failed expect[k] item's evidence, boxes, counts and colours, is in expectations[k]).
7. Decide, on the best candidate:
   - verdict "pass": done; go to 9.
   - a failed item with next_step.action="refine_region" (a local defect: text, logo, face, hand, one
     object): refine_region(image=next_step.image or best_id, bbox=next_step.bbox or mask=next_step.mask,
     prompt=next_step.prompt or what belongs there). A failed expect item's step already carries the
     object's mask, located by the detector.
   - a failing object you can name whose step gives only a rough region (a checklist question's crop box),
     or a defect you see yourself ("the mug handle is warped"): locate it instead of guessing pixels from a
     preview.
     locate(image=best_id, objects=["mug handle"]) gives each instance's box, score and mask_id: then
     refine_region(image=best_id, mask=<that found[].mask_id>, prompt=...). Or in one call
     refine_region(image=best_id, region="mug handle", prompt=...): it locates the best match and refines
     it; its `located` says which box, score and mask_id were used, and located.close lists matches too
     close to call: if the wrong one was refined, call again on the same input with instance=<k>. Nothing
     found is said with the best score seen: lower threshold or name the object differently.
   - next_step.action="judge": the judge call had the wrong original or mask; make the one it names
     (image, original, mask) before refining anything again.
   - next_step.action="strengthen_prompt" or "regenerate" (wrong subject, wrong layout, most checks failed):
     rewrite the prompt with what was missing and generate again with new seeds.
   After any refine_region, every pixel outside its mask_id (the region plus a feathered rim) stays
   bit-identical. Then judge(images=[image.id], prompt=..., original=<its input_id>, mask=mask_id,
   expect=<the entries that failed>) to confirm the fix and that nothing else changed.
8. Round limit: at most {MAX_ROUNDS} rounds of judge -> refine/regenerate. Keep the best-so-far (highest
   overall among images whose verdict is not worse) after each round; when the limit is reached, stop and
   return the best-so-far with what is still wrong, instead of looping.
9. Remember the outcome: remember(text=<final prompt, seed, model, what worked and what failed>,
   kind="generation", image=<final id>) and, for a judge failure worth avoiding next time,
   kind="critique".
10. Answer with the final image id and uri (limner://images/<id>), its seed, the facts you relied on and any
   remaining issue. The lineage resource limner://images/<id>/lineage shows how it was made, and
   limner://session/log lists every call of this session (with where its gallery page is).

If a result says tiny=true (tiny random-weight offline models), the images are noise: test the plumbing,
but do not judge their content."""


def register(server: MCPServer) -> None:
    @server.prompt(
        name="close_context_gap",
        title="Close the context gap",
        description="The full loop for an image request: clarify, recall, search, remember, generate "
        f"{CANDIDATES} candidates, judge, refine the failing region or regenerate (at most {MAX_ROUNDS} "
        "rounds), remember the outcome, return the best-so-far.",
    )
    def close_context_gap(
        request: Annotated[str, Field(description="What the user asked for, in their words.")],
        constraints: Annotated[
            str | None,
            Field(
                description="Hard requirements: size, brand rules, text that must appear, style, deadline."
            ),
        ] = None,
    ) -> list[Message]:
        task = f"The user's request: {request.strip()}"
        if constraints and constraints.strip():
            task += f"\nHard constraints (check each with judge questions): {constraints.strip()}"
        return [UserMessage(f"{task}\n\n{LOOP}")]

    @server.prompt(
        name="product_scene",
        title="Place a product in a new scene",
        description="Foreground-conditioned generation: keep the product's pixels, generate the scene "
        "around it, judge foreground integrity, refine the background's failing region, remember the outcome.",
    )
    def product_scene(
        product_image: Annotated[
            str, Field(description="The product photo: a store id, limner:// URI, data URI, path or URL.")
        ],
        scene: Annotated[
            str, Field(description="The scene to put it in, e.g. 'on a marble kitchen counter'.")
        ],
        product: Annotated[
            str | None, Field(description="What the product is (name, brand, model), if known.")
        ] = None,
        constraints: Annotated[
            str | None, Field(description="Hard requirements: size, placement, mood, brand rules.")
        ] = None,
    ) -> list[Message]:
        what = product.strip() if product and product.strip() else "the product in the photo"
        lines = [
            f"Make a product shot of {what} ({product_image}) in this scene: {scene.strip()}.",
        ]
        if constraints and constraints.strip():
            lines.append(f"Hard constraints (check each with judge questions): {constraints.strip()}")
        lines.append(
            f"""
The product's own pixels must survive: never regenerate the product itself.

1. recall(query="{what}") for known facts and the user's preferences; if the product is named and not
   known, search for it (kind="images" with download_images=true for a clean reference) and remember the
   facts (kind="fact") and the reference (kind="reference", image=<id>).
2. The product is the foreground: generate keeps its pixels bit for bit and paints the scene around it.
   Pass foreground_mask (white = product, same size as the photo) when you have one; otherwise the alpha
   channel or an automatic cut-out is used.
3. generate(prompt=<the scene, lighting and camera that match the product>, foreground={product_image},
   foreground_mask=<mask if any>, placement="auto" or [{{"x": 0.5, "y": 0.66, "scale": 0.45}}],
   n={CANDIDATES}, repair=true); scenes=[...] tries several scenes in one call. Each candidate has mask_id (the
   product's mask on the canvas) and over_extension (product drawn beyond itself; flagged above 0.03).
   status="running" -> jobs(action="wait", job_id=job.job_id) (or, where the host ran the call as an MCP
   task, its result when the task completes).
4. Judge one placement at a time: judge takes one foreground_mask for all its images, and each placement
   has its own mask_id (candidates placed alike share it). For each distinct mask_id, judge(images=[the
   ids of the candidates with that mask_id], prompt=<scene prompt>, foreground_mask=<that mask_id>,
   questions=[is the product intact, is it resting naturally, the constraints], expect=[what the scene
   must hold or not, e.g. {{"object": "{what}", "count": 1}}, {{"object": "person", "present": false}}]), and
   compare the calls' best candidates by overall. A failed foreground.fidelity means the product was damaged: regenerate (new
   seeds, or a smaller placement), never refine the product. A failed foreground.over_extension: follow its
   next_step as given (refine_region with a mask kept clear of the product, or regenerate). A failed item
   elsewhere with next_step.action="refine_region": refine_region(image=best_id, bbox=next_step.bbox or
   mask=next_step.mask, prompt=...) on the background only (keep the region off the product). For a scene
   object you can name but have no mask for ("the vase looks melted"), locate(image=best_id,
   objects=["vase"]) and pass its found[].mask_id as mask, or call refine_region(image=best_id,
   region="vase", prompt=...) and read `located` (which box and mask_id were refined; located.close lists
   ties, pick another with instance=<k>); either way check the box lies off the product. Then judge again
   with original=best_id, mask=<refine_region's mask_id> and foreground_mask=<the placement's mask_id>:
   foreground fidelity then compares the product's pixels with best_id's (PSNR >= 30 dB passes; 100 means
   untouched).
5. At most {MAX_ROUNDS} rounds; keep the best-so-far and return it when the limit is reached.
6. remember(text=<prompt, placement, seed, what worked>, kind="generation", image=<final id>).
7. Answer with the final image id, uri and seed, and the lineage resource limner://images/<id>/lineage."""
        )
        return [UserMessage("\n".join(lines))]
