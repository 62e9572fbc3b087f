"""Writes the labelled memory-ranking set that bench/memory_quality.py measures: memories.jsonl and
queries.jsonl in bench/data/memory_quality/. Seeded: the same files on every run.

    .venv/bin/python bench/data/generate_memory_quality.py

The memories are what an agent driving limner keeps: clients' preferences, product facts, order codes,
judge critiques, shoot plans and references, in the same few shapes with varied wording, so that many
memories share their topic words (logo, background, lamp, light) and differ only by a name, a code or an
answer. Each query has one relevant memory and one slice:

- rare: a rare surname or an order code (written as the user would: other case, '_' for '-'), among codes
  that differ in one character and people with the same first name;
- paraphrase: a past episode asked about in other words, without a name; the query's object word is the one
  dozens of other memories use, the memory uses a synonym (the failure issue #21 reports);
- hard_negative: a person's preference about one product, among the same person's preferences about other
  products and other people's preferences about the same product (same template, another answer);
- multilingual: Chinese, Japanese, Korean, German, French and Spanish memories, asked in their language;
- long: an agent's long question (40-70 words of common topic words) around a brand and product, or around an
  episode;
- filtered: a kind, tags or scope filter picks the relevant memory among ones on the same subject.

Each query is in one half ("half": "tune" or "heldout"): within a slice the queries alternate, tuning first,
150 each. Ranking constants (memory_store/rank.py) are chosen on the tuning half only
(`bench/memory_quality.py --tune`); the held-out half is for the reported table and the rule that the fusion
is never below vectors alone. The halves were drawn after the first fusion had been tuned on all 300 queries;
a grid on the tuning half alone found no constants better by more than one query (see memory_store/rank.py).
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "memory_quality"
SEED = 21

FIRST = [
    "Anna",
    "Ben",
    "Carla",
    "David",
    "Elena",
    "Farid",
    "Greta",
    "Hiro",
    "Ines",
    "Jonas",
    "Kemal",
    "Lena",
    "Marco",
    "Nadia",
    "Omar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tara",
    "Umar",
    "Vera",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoe",
]
SURNAME_PARTS = [
    "kwe",
    "skin",
    "oye",
    "la",
    "ran",
    "thac",
    "ker",
    "vol",
    "mar",
    "dov",
    "ich",
    "bre",
    "ness",
    "hal",
    "vor",
    "sen",
    "ula",
    "bak",
    "zim",
    "tre",
    "lov",
    "ask",
]
BRAND_PARTS = [
    "vex",
    "ora",
    "brim",
    "sol",
    "kal",
    "dra",
    "nix",
    "tor",
    "quo",
    "lum",
    "zen",
    "ark",
    "vel",
    "ion",
    "pax",
    "rud",
    "ome",
    "tav",
    "fyr",
    "gal",
]
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"

# product -> (its part, a synonym the paraphrase episodes use)
PRODUCTS = {
    "espresso machine": ("steam wand", "coffee maker"),
    "road bike": ("frame", "racing bicycle"),
    "desk lamp": ("shade", "reading light"),
    "armchair": ("armrest", "lounge chair"),
    "wristwatch": ("dial", "timepiece"),
    "backpack": ("strap", "rucksack"),
    "kettle": ("handle", "water boiler"),
    "sneakers": ("sole", "trainers"),
    "sofa": ("cushion", "couch"),
    "headphones": ("ear cup", "headset"),
    "perfume bottle": ("stopper", "fragrance flacon"),
    "smartphone": ("camera bump", "mobile phone"),
}
TAG = {product: product.split()[-1] for product in PRODUCTS}
COLOURS = ["teal", "crimson", "ivory", "charcoal", "mustard", "lilac", "navy", "olive", "coral", "sand"]
FINISHES = ["matte", "glossy", "brushed", "satin", "hammered"]
MATERIALS = ["titanium", "walnut", "aluminium", "ceramic", "leather", "brass", "oak", "steel"]
LIGHTS = ["golden-hour", "overcast", "hard noon", "soft window", "neon", "candle-warm"]
SURFACES = ["slate", "linen", "concrete", "marble", "raw plywood", "terrazzo"]
ANGLES = ["three-quarter front", "straight on", "from above", "low and close", "in profile"]
DEFECTS = ["warped", "blurry", "too shiny", "the wrong colour", "cut off", "plastic-looking"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
SCOPES = ["client:acme", "client:globex", "client:initech"]

PREFERENCE = [
    "{person} wants the {product} photographed against a {colour} background.",
    "For the {product} shots, {person} asked for a {colour} backdrop.",
    "{person} prefers a {colour} background behind the {product}.",
]
FACT = [
    "The {brand} {product} has a {finish} {material} {part} and a {colour} logo.",
    "{brand}'s {product}: {finish} {material} {part}, logo printed in {colour}.",
    "On the {brand} {product} the {part} is {finish} {material}; the logo is {colour}.",
]
CRITIQUE = [
    "The {brand} {product} render was rejected: the {part} looked {defect}.",
    "Judge verdict on the {brand} {product}: {part} came out {defect}; regenerate.",
]
PLAN = [
    "Next shoot for {brand}: the {product} on {surface}, {light} light, {angle}.",
    "Plan: {brand} {product} on a {surface} table, lit {light}, framed {angle}.",
]
REFERENCE = [
    "Reference for {brand}: a {light} photo of a {product} on {surface}, shot {angle}.",
    "Mood reference ({brand}): {product} on {surface} in {light} light.",
]
ORDER = [
    "Order {code} is the {colour} {product} for {brand}; it ships {day}.",
    "{code}: {brand} ordered a {colour} {product}, delivery on {day}.",
]
PERSON_NOTE = [
    "{full} signs off every {brand} image before it goes to print.",
    "{full} is the art director at {brand} and answers within a day.",
    "Send the {brand} proofs to {full}, who approves the final colours.",
]
CLIENT_SCOPED = [
    "The client wants {light} light and a {colour} background for the {product}.",
    "For the {product}, the client asked for {light} light on a {colour} backdrop.",
]

# past episodes: (what was remembered, in the memory's words, with {obj} the product's synonym;
#                 the same thing asked in other words, with {obj} the product's everyday name)
EPISODES = [
    (
        "The {obj} pictures came out flat because the steam hid the brand mark; turn it twenty degrees.",
        "why did the {obj} images fail last time?",
    ),
    (
        "Our {obj} hero shot got vetoed since a reflection of the photographer showed in the chrome.",
        "which {obj} photo was turned down over a mirror image of the crew?",
    ),
    (
        "Customers thought the {obj} looked toy-like when shrunk below 300 pixels in the newsletter.",
        "small {obj} thumbnails in email read as cheap plastic",
    ),
    (
        "Legal flagged the {obj} ad: the slogan promised a lifetime guarantee that does not exist.",
        "the lawyers objected to a warranty claim on the {obj} advert",
    ),
    (
        "Midjourney kept adding a second cord to the {obj}; the fix was a negative prompt for cables.",
        "how did we stop the image model from drawing an extra wire on the {obj}?",
    ),
    (
        "A dog walked through the {obj} set on Thursday and knocked the softbox over.",
        "an animal wrecked the lighting during the {obj} session",
    ),
    (
        "The {obj} catalogue printed two shades darker than the screen proof; ask the printer for a wet proof.",
        "the printed {obj} brochure was much too dark compared with the monitor",
    ),
    (
        "We learned the {obj} reads best from slightly below eye level, heroic and tall.",
        "what camera height makes the {obj} look imposing?",
    ),
    (
        "Steam from a cup beside the {obj} fogged the lens in every frame after ten minutes.",
        "condensation ruined the later {obj} exposures",
    ),
    (
        "The {obj} banner was rejected by the marketplace for having text over twenty percent of the area.",
        "the shop platform refused the {obj} ad because of too much lettering",
    ),
    (
        "Children's hands holding the {obj} tested far better with parents than adult hands did.",
        "kids gripping the {obj} won the family audience test",
    ),
    (
        "The {obj} colour drifted green under the fluorescent tubes of the rented warehouse.",
        "the {obj} looked sickly under the factory tube lights",
    ),
    (
        "An influencer's video of the {obj} doubled preorders in one weekend.",
        "which social clip made {obj} advance sales jump?",
    ),
    (
        "Retouching took nine hours because dust specks covered the {obj} in the macro frames.",
        "cleaning up particles on the close-up {obj} pictures cost a whole day",
    ),
    (
        "The {obj} looked cramped in square crops; the winning layout was a wide 21:9 strip.",
        "what aspect ratio gave the {obj} room to breathe?",
    ),
    (
        "The translation on the {obj} box called it a 'fire machine' in the Spanish market.",
        "the {obj} packaging had an embarrassing mistranslation abroad",
    ),
    (
        "The {obj} shoot ran over because the rented studio lost power for two hours.",
        "electricity cut out during the {obj} photo day",
    ),
    (
        "Backlighting the {obj} through frosted glass gave the calm premium mood the founder loved.",
        "light from behind a diffused pane made the {obj} feel luxurious",
    ),
    (
        "The {obj} render had six fingers on the model's hand; use a hand-fix pass before delivery.",
        "a generated person holding the {obj} had an anatomy error in their fingers",
    ),
    (
        "The founder hates seeing the {obj} with any plants in frame; she finds greenery cliché.",
        "no foliage or potted greenery near the {obj}, the boss dislikes it",
    ),
    (
        "We matched the {obj} campaign to the autumn palette of rust, ochre and moss.",
        "which seasonal colour scheme did the {obj} campaign follow?",
    ),
    (
        "The {obj} looked best at f/8; wider apertures lost the edges in blur.",
        "what lens opening kept the whole {obj} sharp?",
    ),
    (
        "Drone footage of the {obj} on a cliff was scrapped because of wind noise and shake.",
        "aerial video of the {obj} outdoors was unusable",
    ),
    (
        "The {obj} sold out in Japan after a minimalist ad with a single word on white.",
        "a sparse one-word poster made the {obj} a hit in Tokyo",
    ),
    (
        "The client called the {obj} renders 'too perfect' and asked for small scratches and wear.",
        "the customer wanted the {obj} images to look used and imperfect",
    ),
    (
        "Shooting the {obj} on a turntable at 36 stops gave a smooth spin for the web viewer.",
        "how many angles did the rotating {obj} product viewer use?",
    ),
    (
        "Accessibility review: the {obj} page's grey text on beige failed contrast checks.",
        "readability audit complained about faint lettering next to the {obj}",
    ),
    (
        "The {obj} prototype cracked under the hot lights, so the team used a 3D print double.",
        "the sample {obj} broke from the heat and was replaced by a replica",
    ),
    (
        "An AI upscale of the {obj} invented a fake serial number on the label.",
        "super-resolution made up characters printed on the {obj}",
    ),
    (
        "Testing showed the {obj} ad with a price tag converted better than the one without.",
        "did showing the cost on the {obj} advert help sales?",
    ),
    (
        "The {obj} was shot floating on invisible fishing line, then the line was painted out.",
        "how did we make the {obj} appear to hover in mid-air?",
    ),
    (
        "Copy for the {obj} must avoid the word 'cheap'; use 'accessible' instead.",
        "which adjective is banned in the {obj} text?",
    ),
    (
        "Our {obj} film won bronze at the regional advertising awards.",
        "did the {obj} commercial get a prize?",
    ),
    (
        "The sunrise shoot of the {obj} was moved twice because of fog on the lake.",
        "mist over the water postponed the dawn {obj} photos",
    ),
    (
        "Interns assembled the {obj} backwards in the first batch of catalogue photos.",
        "the {obj} was put together wrong in early product pictures",
    ),
    (
        "The {obj} ad ran in the metro and commuters kept photographing it.",
        "subway riders loved the {obj} poster underground",
    ),
    (
        "The {obj} mock-up used a stock model whose licence expired in March.",
        "image rights ran out for the person shown with the {obj}",
    ),
    (
        "The {obj} looks warmer with a gold reflector bounced from the left.",
        "what fill card gives the {obj} a cosy tone?",
    ),
    (
        "The tiny engraving on the {obj} only shows with a raking light at a low angle.",
        "how to reveal the faint etched text on the {obj}?",
    ),
    (
        "Skaters using the {obj} in a park gave the brand its youthful image.",
        "which street-culture setting made the {obj} feel young?",
    ),
    (
        "The {obj} unboxing video was cut to 15 seconds for the story format.",
        "how long was the vertical clip of opening the {obj} package?",
    ),
    (
        "Packaging shots of the {obj} need the recycling symbol visible by regulation.",
        "what mark must appear on {obj} box photos by law?",
    ),
    (
        "The {obj} was photographed in a real kitchen in Lisbon rented for a day.",
        "which city apartment hosted the {obj} lifestyle scene?",
    ),
    (
        "We replaced the sky behind the {obj} with a stormy one and the ad felt dramatic.",
        "swapping in dark clouds gave the {obj} picture tension",
    ),
    (
        "Old men in cafés were the surprise best audience for the {obj} campaign.",
        "elderly coffee-shop regulars responded most to the {obj} ads",
    ),
    (
        "The {obj} logo must never be smaller than 12 mm on print.",
        "minimum printed size for the brand mark on the {obj}",
    ),
    (
        "Snow on set made the {obj} look crisp and the blue of the sky popped.",
        "wintry weather helped the {obj} outdoor photo look fresh",
    ),
    (
        "Generated backgrounds behind the {obj} kept showing garbled signage; we blurred them.",
        "the AI scene around the {obj} had nonsense lettering on shop signs",
    ),
    (
        "The {obj} photos from the trade fair were all unusable because of mixed lighting.",
        "exhibition hall pictures of the {obj} had clashing colour temperatures",
    ),
    (
        "Twins modelled the {obj} side by side for the symmetry spread.",
        "which mirrored-pair casting idea was used for the {obj} layout?",
    ),
    (
        "The {obj} drop test video went viral after it survived a fall from a balcony.",
        "a clip of the {obj} surviving a big drop spread online",
    ),
    (
        "The lighting designer suggested a single bare bulb for the moody {obj} scene.",
        "one naked light globe for a noir feel around the {obj}",
    ),
    (
        "Fans asked for the {obj} in a left-handed version after the launch images.",
        "customers requested a version of the {obj} for southpaws",
    ),
    (
        "The {obj} was shot in slow motion at 240 frames per second for the launch teaser.",
        "high-speed camera footage of the {obj} for the premiere trailer",
    ),
    (
        "A sticker on the {obj} prototype said 'do not photograph' and nobody noticed until the edit.",
        "a warning label on the sample {obj} slipped into the final pictures",
    ),
    (
        "Our best {obj} image of the year was taken on a phone by the intern.",
        "the top {obj} photo came from a mobile snapshot by a junior",
    ),
    (
        "The {obj} lookbook printed on recycled paper made every colour look muddy.",
        "eco stock made the {obj} catalogue tones dull",
    ),
    (
        "The client wants the {obj} always shown in use, never empty on a table.",
        "customer insists on the {obj} being handled by someone in every frame",
    ),
    (
        "Rain on the window behind the {obj} gave a cosy evening feel.",
        "drops on the glass backdrop made the {obj} scene homely",
    ),
    (
        "The {obj} ad was pulled in Germany for resembling a competitor's trademark.",
        "the {obj} campaign was withdrawn over a look-alike brand mark dispute",
    ),
]

# multilingual: (language, memory templates, query templates); {name} is a name in that script
ZH_SURNAMES, ZH_GIVEN = "王李张刘陈杨黄赵周吴", "明华伟芳娜静磊洋艳勇"
ZH_BRAND_A, ZH_BRAND_B = "龙凤星云天海金银光华", ["科技", "设计", "工坊", "制造", "传媒"]
JA_KANA = "カキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモラリルレロ"
KO_SYLLABLES = "가나다라마바사아자차카타파하서준민지현우"
EU_PARTS = ["ber", "lin", "gau", "mar", "tel", "ros", "val", "dor", "fen", "kal", "mün", "sée", "lou"]
COLOUR_WORDS = {
    "zh": ["红色", "蓝色", "绿色", "黑色", "白色", "金色", "灰色", "紫色"],
    "ja": ["赤", "青", "緑", "黒", "白", "金色", "灰色", "紫"],
    "ko": ["빨간색", "파란색", "초록색", "검은색", "흰색", "금색", "회색", "보라색"],
    "de": ["rot", "blau", "grün", "schwarz", "weiß", "golden", "grau", "violett"],
    "fr": ["rouge", "bleu", "vert", "noir", "blanc", "doré", "gris", "violet"],
    "es": ["rojo", "azul", "verde", "negro", "blanco", "dorado", "gris", "violeta"],
}
PRODUCT_WORDS = {
    "zh": ["台灯", "自行车", "咖啡机", "手表", "背包", "水壶"],
    "ja": ["デスクランプ", "自転車", "コーヒーメーカー", "腕時計", "リュック", "やかん"],
    "ko": ["책상 램프", "자전거", "커피 머신", "손목시계", "배낭", "주전자"],
    "de": ["Schreibtischlampe", "Fahrrad", "Kaffeemaschine", "Armbanduhr", "Rucksack", "Wasserkocher"],
    "fr": ["lampe de bureau", "vélo", "machine à café", "montre", "sac à dos", "bouilloire"],
    "es": ["lámpara de escritorio", "bicicleta", "cafetera", "reloj", "mochila", "hervidor"],
}
ML_MEMORY = {
    "zh": ["{name}的{product}标志必须是{colour}。", "客户说{name}的{product}要放在{colour}的背景前拍摄。"],
    "ja": ["{name}の{product}のロゴは{colour}でなければならない。", "{name}は{product}を{colour}の背景で撮影したい。"],
    "ko": ["{name}의 {product} 로고는 {colour}이어야 한다.", "{name}은 {product}를 {colour} 배경에서 촬영하길 원한다."],
    "de": ["Bei {name} muss das Logo auf dem Produkt „{product}“ {colour} sein.", "{name} möchte das Produkt „{product}“ vor einem Hintergrund in {colour} fotografiert haben."],
    "fr": ["Pour {name}, le logo du produit « {product} » doit être {colour}.", "{name} veut le produit « {product} » photographié sur un fond {colour}."],
    "es": ["Para {name}, el logotipo del producto «{product}» debe ser {colour}.", "{name} quiere el producto «{product}» fotografiado sobre un fondo {colour}."],
}  # fmt: skip
ML_QUERY = {
    "zh": ["{name}的{product}标志是什么颜色？", "{name}的{product}用什么背景拍？"],
    "ja": ["{name}の{product}のロゴは何色？", "{name}は{product}をどんな背景で撮りたい？"],
    "ko": ["{name}의 {product} 로고 색상은?", "{name}은 {product}를 어떤 배경에서 찍고 싶어 하나?"],
    "de": ["Welche Farbe hat das Logo auf der {product} bei {name}?", "Vor welchem Hintergrund will {name} die {product} sehen?"],
    "fr": ["Quelle couleur pour le logo sur {product} chez {name} ?", "Sur quel fond {name} veut-il voir {product} ?"],
    "es": ["¿De qué color es el logotipo en {product} para {name}?", "¿Sobre qué fondo quiere {name} ver {product}?"],
}  # fmt: skip
LONG_FRAMES = [
    "I am about to write the prompt for a new product photo and want to get everything right this time. "
    "{core} Please also check anything the client said about lighting, background colour, camera angle and "
    "the logo, and any critique of earlier renders, so the next generation does not repeat old mistakes.",
    "Context for the next generate call: the team needs a clean hero image for the website and the print "
    "catalogue, consistent with earlier shoots and the brand colours. {core} If there are notes on props, "
    "surfaces, light or what the judge disliked before, list them too.",
    "Before planning tomorrow's studio session and the follow-up renders, I need to recall what we learned. "
    "{core} Anything about the background, the product finish, the angle the client prefers or previous "
    "rejected images would help me write a better prompt.",
]
LONG_CORES_FACT = [
    "What do we know about the {brand} {product}, in particular the material and finish of its {part}?",
    "Specifically the {brand} {product}: what is its {part} made of and how is it finished?",
]


def main() -> None:
    rng = random.Random(SEED)
    memories: list[dict] = []
    queries: list[dict] = []

    def add(text: str, kind: str, tags: list[str] | None = None, scope: str = "default") -> str:
        key = f"m{len(memories):04d}"
        memories.append({"key": key, "text": text, "kind": kind, "scope": scope, "tags": tags or []})
        return key

    def ask(slice_: str, query: str, relevant: str, **filters: object) -> None:
        entry: dict = {"slice": slice_, "query": query, "relevant": relevant}
        if filters:
            entry["filter"] = filters
        queries.append(entry)

    def syllables(parts: list[str], low: int, high: int, taken: set[str]) -> str:
        while True:
            word = "".join(rng.choice(parts) for _ in range(rng.randint(low, high))).capitalize()
            if word not in taken and len(word) >= 5:
                taken.add(word)
                return word

    taken: set[str] = set()
    brands = [syllables(BRAND_PARTS, 2, 3, taken) for _ in range(320)]
    people = [f"{rng.choice(FIRST)} {syllables(SURNAME_PARTS, 2, 3, taken)}" for _ in range(260)]
    products = list(PRODUCTS)

    def fields(**given: str) -> dict[str, str]:
        product = given.get("product") or rng.choice(products)
        values = {
            "product": product,
            "part": PRODUCTS[product][0],
            "colour": rng.choice(COLOURS),
            "finish": rng.choice(FINISHES),
            "material": rng.choice(MATERIALS),
            "light": rng.choice(LIGHTS),
            "surface": rng.choice(SURFACES),
            "angle": rng.choice(ANGLES),
            "defect": rng.choice(DEFECTS),
            "day": rng.choice(DAYS),
        }
        values.update(given)
        return values

    # 1. brands: facts, critiques, plans, references (the topic words every memory shares)
    brand_facts: list[tuple[str, str, str, str]] = []  # (key, brand, product, part)
    brand_subjects: list[tuple[str, str, dict[str, str]]] = []  # (brand, product, {kind: key})
    for brand in brands:
        for product in rng.sample(products, rng.randint(1, 2)):
            values = fields(brand=brand, product=product)
            kinds = {"fact": add(rng.choice(FACT).format(**values), "fact", [TAG[product]])}
            brand_facts.append((kinds["fact"], brand, product, values["part"]))
            for kind, templates in (("critique", CRITIQUE), ("plan", PLAN), ("reference", REFERENCE)):
                if rng.random() < 0.45:
                    values = fields(brand=brand, product=product)
                    kinds[kind] = add(rng.choice(templates).format(**values), kind, [TAG[product]])
            brand_subjects.append((brand, product, kinds))

    # 2. people: preferences (several people per product, several products per person) and contact notes
    preferences: dict[tuple[str, str], str] = {}
    for person in people:
        for product in rng.sample(products, rng.randint(1, 4)):
            values = fields(person=person, product=product)
            preferences[(person, product)] = add(
                rng.choice(PREFERENCE).format(**values), "preference", [TAG[product]]
            )
    contacts: list[tuple[str, str, str]] = []  # people named nowhere else: a surname names one memory
    for person in [f"{rng.choice(FIRST)} {syllables(SURNAME_PARTS, 2, 3, taken)}" for _ in range(120)]:
        brand = rng.choice(brands)
        contacts.append(
            (add(rng.choice(PERSON_NOTE).format(full=person, brand=brand), "fact"), person, brand)
        )

    # 3. orders: codes in families that differ in one character
    orders: list[tuple[str, str]] = []
    for _ in range(70):
        stem, suffix = rng.randint(1000, 9999), "".join(rng.choice(LETTERS) for _ in range(2))
        family = {f"SKU-{stem}-{suffix}", f"SKU-{stem}-{suffix[0]}{rng.choice(LETTERS)}"}
        family.add(f"SKU-{str(stem)[::-1]}-{suffix}")
        for code in sorted(family):
            values = fields(brand=rng.choice(brands), code=code)
            orders.append((add(rng.choice(ORDER).format(**values), "fact", ["order"]), code))

    # 4. client-scoped preferences: the same wording in several scopes, another answer in each
    scoped: list[tuple[str, str, str, str]] = []  # (key, scope, product, light)
    for product in products:
        for scope in SCOPES:
            values = fields(product=product)
            text = rng.choice(CLIENT_SCOPED).format(**values)
            scoped.append((add(text, "preference", [TAG[product]], scope), scope, product, values["light"]))

    # 5. episodes: one per situation, the object named by its synonym
    episodes: list[tuple[str, str]] = []  # (key, query)
    for memory_text, query_text in EPISODES:
        product = rng.choice(products)
        key = add(memory_text.format(obj=PRODUCTS[product][1]), rng.choice(["critique", "fact", "plan"]))
        episodes.append((key, query_text.format(obj=product)))

    # 6. multilingual: brands and people named in each script, two memories each
    multilingual: list[tuple[str, str, str, str, int]] = []  # (key, language, name, product, template)
    for language in ML_MEMORY:
        seen: set[str] = set()
        for _ in range(36):
            name = _ml_name(language, rng, seen)
            product = rng.choice(PRODUCT_WORDS[language])
            for template_index, template in enumerate(ML_MEMORY[language]):
                colour = rng.choice(COLOUR_WORDS[language])
                key = add(
                    template.format(name=name, product=product, colour=colour), "preference", [language]
                )
                multilingual.append((key, language, name, product, template_index))

    # -- queries -------------------------------------------------------------------------------------
    # rare: order codes as a user types them, and surnames
    for key, code in rng.sample(orders, 25):
        form = rng.choice([code, code.lower(), code.replace("-", "_"), code.replace("-", " ")])
        wording = rng.choice(["{c}", "what is order {c}?", "when does {c} ship", "status of {c}"])
        ask("rare", wording.format(c=form), key)
    for key, person, _brand in rng.sample(contacts, 25):
        surname = person.split()[1]
        wording = rng.choice(["who is {s}?", "{s}'s role", "what does {s} do for us", "contact {s}"])
        ask("rare", wording.format(s=surname), key)

    # paraphrase: the episodes in other words
    for key, query in episodes[:50]:
        ask("paraphrase", query, key)

    # hard negatives: a person with preferences on several products, a product several people have
    multi = [(p, x) for (p, x) in preferences if sum(1 for q, _ in preferences if q == p) >= 2]
    for person, product in rng.sample(multi, 50):
        wording = rng.choice([
            "what background does {p} want for the {x}?",
            "{p}'s backdrop colour for the {x} shots",
            "which colour behind the {x} does {p} like?",
        ])  # fmt: skip
        ask("hard_negative", wording.format(p=person, x=product), preferences[(person, product)])

    # multilingual: each language in its own words
    by_language: dict[str, list[tuple[str, str, str, str, int]]] = {}
    for entry in multilingual:
        by_language.setdefault(entry[1], []).append(entry)
    for language, entries in by_language.items():
        count = 10 if language in ("zh", "ja", "ko") else 7 if language != "es" else 6
        for key, _, name, product, template_index in rng.sample(entries, count):
            query = ML_QUERY[language][template_index].format(name=name, product=product)
            ask("multilingual", query, key)

    # long: an agent's long question around a brand and product, or around an episode
    for key, brand, product, part in rng.sample(brand_facts, 25):
        core = rng.choice(LONG_CORES_FACT).format(brand=brand, product=product, part=part)
        ask("long", rng.choice(LONG_FRAMES).format(core=core), key)
    for key, query in episodes[50:] + rng.sample(episodes[:50], 25 - len(episodes[50:])):
        core = f"I half remember something like this: {query}."
        ask("long", rng.choice(LONG_FRAMES).format(core=core), key)

    # filtered: a kind among the same brand's memories; a scope among the same words; a tag
    with_critique = [(b, x, k) for b, x, k in brand_subjects if "critique" in k and len(k) >= 3]
    for brand, product, kinds in rng.sample(with_critique, 20):
        kind = rng.choice([k for k in kinds if k != "fact"])
        ask("filtered", f"{brand} {product}", kinds[kind], kind=kind)
    for key, scope, product, _light in rng.sample(scoped, 15):
        ask(
            "filtered", f"what light and background does the client want for the {product}?", key, scope=scope
        )
    tagged = [(p, x) for (p, x) in multi if sum(1 for q, _ in preferences if q == p) >= 3]
    for person, product in rng.sample(tagged, 15):
        ask(
            "filtered",
            f"{person}'s background preference",
            preferences[(person, product)],
            tags=[TAG[product]],
        )

    # the halves: within each slice the queries alternate, tuning first, so each half holds every kind of
    # question a slice asks (codes and surnames, kinds, scopes and tags) in equal measure
    seen_in_slice: dict[str, int] = {}
    for entry in queries:
        place = seen_in_slice[entry["slice"]] = seen_in_slice.get(entry["slice"], -1) + 1
        entry["half"] = "tune" if place % 2 == 0 else "heldout"

    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("memories.jsonl", memories), ("queries.jsonl", queries)):
        with open(OUT / name, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    slices = {
        s: sum(1 for q in queries if q["slice"] == s) for s in dict.fromkeys(q["slice"] for q in queries)
    }
    print(f"{len(memories)} memories, {len(queries)} queries: {slices}")


def _ml_name(language: str, rng: random.Random, seen: set[str]) -> str:
    """A name written in the language's script, not yet used."""
    for _ in itertools.count():
        if language == "zh":
            name = rng.choice(ZH_BRAND_A) + rng.choice(ZH_BRAND_A) + rng.choice(ZH_BRAND_B)
            if rng.random() < 0.4:
                name = rng.choice(ZH_SURNAMES) + rng.choice(ZH_GIVEN) + rng.choice(ZH_GIVEN)
        elif language == "ja":
            name = "".join(rng.choice(JA_KANA) for _ in range(rng.randint(3, 5))) + "社"
        elif language == "ko":
            name = "".join(rng.choice(KO_SYLLABLES) for _ in range(3))
        else:
            name = "".join(rng.choice(EU_PARTS) for _ in range(rng.randint(2, 3))).capitalize()
        if name not in seen:
            seen.add(name)
            return name
    raise AssertionError("unreachable")


if __name__ == "__main__":
    main()
