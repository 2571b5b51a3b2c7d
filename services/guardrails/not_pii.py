"""What the words around a PII candidate say it is instead: a company, a work's title, a
day, a ship, a town or a destination rather than a person; a house number or a postcode
rather than a phone number; a company's legal form rather than a web address. Pure: no
I/O; the PII adapter asks it about each candidate span of a text.

Chosen on presidio-evaluator's own generator over the tune half of its templates
(bench/data/guardrails/pii/generated_tune.jsonl) and on the in-house sentences; each rule
reads a shape that a company, an address or a title has in any text, not a template.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from services.guardrails.linear import compile_linear

# Words a company's name holds or ends with ("Bharat Heavy Electricals Limited", "Nippon
# Flour Mills Co.Ltd.", "Vanguard Real Estate Index Fund ETF", "Corporate Office
# Properties Trust"), compared in lower case without dots at their ends.
ORG_WORDS = {
    "limited", "ltd", "co.ltd", "coltd", "corporation", "corp", "incorporated", "incorporation",
    "inc", "company", "holdings", "holding", "group", "plc", "llc", "l.p", "lp", "fund",
    "funds", "trust", "etf", "reit", "bancorp", "bank", "bankcorp", "acquisition",
    "acquisitions", "enterprises", "enterprise", "industries", "technologies", "partners",
    "capital", "ventures", "investments", "securities", "pharmaceuticals", "therapeutics",
    "biotech", "bioscience", "biosciences", "energy", "resources", "systems", "solutions",
    "international", "s.a", "s.a.a", "n.v", "nv", "spa", "s.p.a", "gmbh", "asa", "oyj",
    "bhd", "berhad", "tbk", "sas", "sarl", "kgaa", "k.k", "kk", "kabushiki", "kaisha",
    "societe", "société", "anonyme", "grp", "hldg", "hldgs", "laboratories", "electronics",
    "networking", "index", "hedged", "yield", "income", "opportunities", "certificates",
    "banco", "bancorporation", "groep", "stichting", "koninklijke", "banc", "groupe", "grupo",
    "financiero", "companylimited", "realty", "cos", "shares", "shs", "shrs", "stock",
    "preferred", "pref", "co", "foundation", "insurance", "analytics", "sciences", "stores",
    "infrastructure", "biotechnology", "notes", "nextshares", "marketing", "consulting",
    "logistics", "communications", "healthcare", "pharma", "motors", "airlines", "foods",
    "brands", "software", "services", "studios", "financial", "news", "research",
    "exchange", "computing", "animation", "lending", "entertainment", "publishing", "digital",
    "labs", "networks", "robotics", "semiconductor", "semiconductors", "aerospace",
    "chemicals", "petroleum", "mining", "minerals", "shipping", "manufacturing", "mfg",
    "telecom", "wireless", "broadcasting",
}  # fmt: skip
# Words that end an event's name ("the Ceylon Marathon", "the Santomenna Film Festival"):
# the run before them names the event, or the place that holds it.
EVENT_WORDS = {
    "marathon", "festival", "fair", "expo", "championship", "championships", "cup", "games",
    "derby", "regatta", "carnival", "biennale", "triathlon",
}  # fmt: skip
# A company's legal form as written after its name in Europe, the Americas and Asia,
# compared without dots or case ("S.Coop." and "s.coop" alike: "Gentili s.r.l.", "Becker
# Binner e.V."). Forms that are also everyday words ("AS", "AB", "AG", "SA") count only in
# capitals.
_LEGAL_FORMS = {
    "sa", "sl", "slu", "scoop", "srl", "srls", "spa", "sas", "sau", "sad", "scp", "scom",
    "snc", "sarl", "sasu", "eurl", "ev", "gmbh", "mbh", "kg", "ohg", "gbr", "ug", "bv", "nv",
    "vof", "oy", "oyj", "aps", "asa", "plc", "llc", "llp", "ltd", "ltda", "inc", "corp",
    "pty", "sro", "spzoo", "kft", "zrt", "doo", "ad", "ab", "as", "ag", "sc", "sca", "se",
    "kk", "kgaa", "sab", "cv",
}  # fmt: skip
_LEGAL_FORMS_CAPITALS_ONLY = {"ad", "ab", "as", "ag", "sa", "sc", "ug", "se", "cv"}


def legal_form(word: str) -> bool:
    """Whether `word` (punctuation around it allowed) is a company's legal form."""
    bare = word.split("\\", 1)[0].strip(",.;:!?()'\"").removesuffix("'s")
    key = bare.replace(".", "").replace("/", "").lower()
    if key in _LEGAL_FORMS_CAPITALS_ONLY:
        return bare.replace(".", "").isupper()
    return key in _LEGAL_FORMS


# Glued to the word before it in some listings ("FreakOut Holdingsinc.", "Nippon DenkaiLtd.").
# A surname may end in "inc" ("Trpinc"): the form glued on is written in capitals, or
# after "Holdings".
_GLUED_ORG = compile_linear(
    r"[\p{Ll}\p{Lu}](?:Inc|Ltd|Corp|Co\.?Ltd|Company(?:Limited)?|Limited)\.*$|"
    r"(?i:holdings|industries|group)inc\.*$"
)
_CAPITALISED = compile_linear(r"^[\p{Lu}\d]")


# A legal form written in lower case right after a company's name ("John Menzies plc").
_LOWER_LEGAL_FORM = compile_linear(
    r"^(?:plc|inc|ltd|llc|llp|gmbh|corp)\.?(?:['\x{2019}]s)?[,.;:]?$"
)
# Legal forms written out ("Bharat Heavy Electricals Limited").
LONG_LEGAL_FORMS = {"limited", "incorporated", "corporation", "company"}
# Joiners inside a company's name ("Kulicke and Soffa Industries Inc.", "Rossi e Figli").
NAME_JOINERS = {"and", "et", "e", "&"}


def company_over(words: list[str], joiner: bool, least: int = 2) -> bool:
    """`words[0]` is one word in brackets or (with `joiner`: right after a name of one word)
    a joiner, and capitalised words after it end in a legal form: the company's name goes
    on over it. After a joiner `least` words come before the form ("Kulicke and Soffa
    Industries Inc."; "Marta and Acme Corp." keeps its person, as "Maria Rossi and Acme
    Corp." does); in brackets no acronym nor job ("Tom Hughes (CFO) Northwind Ltd.")."""
    first = words[0]
    inner = first[1:-1]
    if joiner and first.lower() in NAME_JOINERS:
        needed = least
    elif (
        first.startswith("(")
        and first.endswith(")")
        and inner[:1].isupper()
        and not inner.isupper()
        and inner.lower() not in JOB_HEADS
    ):
        needed = 0
    else:
        return False
    for i, word in enumerate(words[1:]):
        if legal_form(word) or _bare(word) in LONG_LEGAL_FORMS:
            return i >= needed
        if not _CAPITALISED.search(word) or word.endswith((",", ";", ":")):
            return False
    return False


def _bare(word: str) -> str:
    return word.strip(",;:!?()'\"").removesuffix("'s").removesuffix("\u2019s").rstrip(".").lower()


def company_word(word: str) -> bool:
    """A company's word or legal form ("Limited", "Co.LTD.", "Fund", "S.p.A.")."""
    return _bare(word) in ORG_WORDS or legal_form(word)


def company_name(text: str, start: int, end: int) -> bool:
    """The span, or the run of capitalised words that continues it on its line, holds a
    company's word: "Cimarex Energy Co.", "Nankai Tatsumura Construction Co.Ltd.",
    "Papa John's International". The run stops at the first word in lower case ("Jacob
    Hamilton of Tenneco Inc." keeps its person)."""
    line_end = text.find("\n", end)
    tail = text[end : line_end if line_end >= 0 else len(text)]
    if tail.startswith(("'s ", "\u2019s ")):
        tail = tail[2:]  # "Papa John's International", "Carter's Inc."
    words = text[start:end].split()
    if not words:
        return False
    spanned = len(words)
    # The run ends at a comma; a legal form right after it is still the company's ("Ames
    # Department Stores, Inc.", "Barnes & Noble, Inc.").
    after_comma: list[str] = []
    if tail.startswith(",") and tail[1:2].isspace():
        after_comma = tail[1:].split()
    else:
        # A name cut inside a word ("Tri-star Resources PLC", "Asia Pacific Ex-Japan
        # AlphaDEX Fund", "NEXT FUNDS Russell/Nomura") or inside brackets ("Agri-Tech (India)
        # Ltd"): the run goes on after the rest of that word; cut at a dot inside it
        # ("Sintesi S.p|A."), that rest ends the span's last word.
        if tail[:1] == "." and tail[1:2].isalpha():
            glued, _, tail = tail.partition(" ")
            words[-1] += glued
        elif tail[:1] in ("-", "/", ")"):
            tail = tail.split(None, 1)[1] if len(tail.split(None, 1)) > 1 else ""
        rest = tail.split()
        for i, word in enumerate(rest[:6]):
            if word in ("&", "&amp;"):
                continue  # "Rajshree Sugars & Chemicals Limited"
            # "John Menzies plc's new store", "Rossi Bianchi s.r.l. in Turin"
            if _LOWER_LEGAL_FORM.match(word) or legal_form(word):
                words.append(word)
                break
            if company_over(rest[i : i + 4], joiner=len(words) == 1):
                # "(Madras) Limited", "Kulicke and Soffa Industries Inc.": a word in
                # brackets or a joiner inside a company's name.
                continue
            if word.startswith("(") or not _CAPITALISED.search(word.lstrip("\"'&")):
                break  # "Mr. Zak P Sanders (Insurance Acquisition Corp.)": a person's employer
            words.append(word)
            if word.endswith((",", ";", ":")):
                if word.endswith(","):
                    after_comma = rest[i + 1 :]
                break
    if after_comma and legal_form(after_comma[0]):
        words.append(after_comma[0])
    # A job's title after a name ("Anna Smith Software Engineer", "Tom Lee Group Manager"):
    # the run ends in a job's head, so its company words name a trade, not a company.
    if any(_bare(w) in JOB_HEADS for w in words[spanned:]):
        words = words[:spanned]
        while len(words) > 1 and _bare(words[-1]) in ORG_WORDS:
            words.pop()
    if any(_bare(w) in EVENT_WORDS for w in words[1:]):
        return True
    if any(_bare(w) in ORG_WORDS or _GLUED_ORG.search(w) or legal_form(w) for w in words[1:]) or (
        _bare(words[0]) in ORG_WORDS or _GLUED_ORG.search(words[0])
    ):
        return True
    # "Union Bank of India", "Bank of America": the run named after a place follows "of"
    # and a capitalised company word ("in the company of Anna Rossi" keeps its person).
    head = text[max(0, start - 40) : start].split()
    return (
        len(head) >= 2
        and head[-1].lower() == "of"
        and head[-2][:1].isupper()
        and _bare(head[-2]) in ORG_WORDS
    )


# A title in quotes credited to someone ("Tube Snake Boogie" by ...).
_QUOTED_BY = compile_linear(r"^[^\"\n\x{201C}\x{201D}]{0,40}[\"\x{201D}][ \t]*by\b")
_QUOTE_OPEN = compile_linear(r"[\"\x{201C}][^\"\n\x{201C}\x{201D}]{0,60}$")


def work_title(text: str, start: int, end: int) -> bool:
    """A title in quotes credited with "by": a song's, a book's. (A run after a possessive,
    "Mara Szathmáry's Cautionary Tales", is not read as a title: "Optigov's Tsuneto Heida"
    is a person.)"""
    before = text[max(0, start - 60) : start]
    return bool(_QUOTE_OPEN.search(before) and _QUOTED_BY.search(text[end : end + 60]))


# "Labor Day", "Mother's Day", "New Year's Day": a day's name, not the surname Day.
_DAY_NAME = compile_linear(r"\p{Lu}[\pL\pM]*(?:['\x{2019}]s|s['\x{2019}])?[ \t]+$")


def day_name(text: str, start: int, end: int) -> bool:
    return text[start:end] == "Day" and bool(_DAY_NAME.search(text[max(0, start - 30) : start]))


# A ship's name after its prefix ("USNS Lépicier", "USS Iversen", an address of the fleet).
_SHIP = compile_linear(r"\b(?:USS|USNS|USNV|USCGC|HMS|HMCS|HMAS|RMS|MV|SS)[ \t]+$")


_SHIP_FIRST = compile_linear(r"^(?:USS|USNS|USNV|USCGC|HMS|HMCS|HMAS|RMS|MV|SS)[ \t]")


def ship_name(text: str, start: int) -> bool:
    """After its prefix, or a span that holds the prefix too ("USS Knotek")."""
    return bool(
        _SHIP.search(text[max(0, start - 8) : start]) or _SHIP_FIRST.search(text[start : start + 7])
    )


# A line that ends with a flat or a suite and its number ("Apt. 319", "}} Suite 449",
# "3645 Avenida Visconde Valmor 61 Apt. 440") in an address block: the line after it is
# the town's ("Salumäe", "Zielona Góra", "Olmedo de Camaces").
_UNIT_LINE = compile_linear(r"(?i)(?:^|[^\pL])(?:apt\.?|apartment|suite|unit|flat)[ \t]+\w+[ \t]*$")
_HAS_DIGIT = compile_linear(r"\d")


def town_line(text: str, start: int, end: int) -> bool:
    """The span's line holds no digit, and the line above ends with a flat's or a suite's
    number: the town of an address, whose block reads name, street, flat, town."""
    end = start + len(text[start:end].rstrip())
    line_start = text.rfind("\n", 0, start) + 1
    if line_start == 0:
        return False
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    if _HAS_DIGIT.search(text[line_start:line_end]):
        return False
    above_start = text.rfind("\n", 0, line_start - 1) + 1
    return bool(_UNIT_LINE.search(text[above_start : line_start - 1]))


# Where someone goes, comes from or lives ("flew to Reykjavík", "arrived at Birgi
# Aerostazione", "logged in from Nicosia", "a new plant near Montbovon", "born in Gyôr").
_DESTINATION = compile_linear(
    r"(?i)\b(?:(?:(?:flew|fly|flies|flying|flown|drove|travell?ed|moved|moving|relocated|"
    r"relocating|emigrated|headed|sailed)[ \t]+(?:back[ \t]+)?to|arrived[ \t]+(?:at|in)|"
    r"(?:flew|drove|travell?ed|flight|flights|train|commuted|logged[ \t]+in|signed[ \t]+in|"
    r"connecting|connected)[ \t]+from|(?:born|raised|based|located|headquartered|resides|"
    r"residing)[ \t]+in|(?:forecast|weather|temperatures?)[ \t]+(?:for|in)|(?:flights?|"
    r"trains?|ferry|ferries|trip|trips)[ \t]+to|(?:plant|factory|office|offices|branch|"
    r"warehouse|campus|site|store)[ \t]+(?:in|near)))[ \t]+$"
)
# What follows a place's name: "Aasiaat is where ...", "Ora, a town of 20,000 people".
_PLACE_AFTER = compile_linear(
    r"^(?:[ \t]+is[ \t]+where\b|,?[ \t]+(?:a|the)[ \t]+(?:small[ \t]+|little[ \t]+|"
    r"coastal[ \t]+|port[ \t]+)?(?:town|city|village|municipality|capital|region|province|"
    r"county|district)\b|[ \t]+(?:city[ \t]+|town[ \t]+|county[ \t]+|district[ \t]+)?council\b)"
)


# "At the Lavacherie branch", "the Rzeszów fair", "Mozio's Traversara plant", "the
# Limassol half-marathon": a place's name between "the" or a possessive and a noun for a
# site or an event (not a home: "the Smith residence" is a family's).
_THE_BEFORE = compile_linear(r"(?i)(?:\bthe|['\x{2019}]s)[ \t]+$")
_SITE_AFTER = compile_linear(
    r"^[ \t]+(?:branch|office|store|plant|fair|airport|station|campus|headquarters|factory|"
    r"warehouse|museum|harbour|harbor|port|conference|summit|forum|congress|convention|"
    r"symposium|half-marathon|marathon|festival|hospital|clinic)\b"
)
# "Andrea Vogel, 29, of Sidi Saidane, was named ...": after a comma and "of", up to the next
# comma, where someone is from.
_COMMA_OF = compile_linear(r",[ \t]+of[ \t]+$")


# The capitalised words right before a span, on its line ("Zero " before "Branco").
_CAPITALISED_BEFORE = compile_linear(r"(?:\p{Lu}[\pL\pM'.-]*[ \t]+){1,3}$")


def destination(text: str, start: int, end: int) -> bool:
    """Where someone goes or lives; a possessive makes it someone's ("flew to Anna's
    wedding"). The words that lead there are read before the whole capitalised run ("logged
    in from Zero Branco", where only "Branco" was taken for a surname)."""
    if text[end : end + 2] in ("'s", "\u2019s"):
        return False
    run = _CAPITALISED_BEFORE.search(text[max(0, start - 60) : start])
    if run is not None:
        start -= len(run.group())
    return bool(
        _PLACE_AFTER.search(text[end : end + 40])
        or _DESTINATION.search(text[max(0, start - 40) : start])
        or (_COMMA_OF.search(text[max(0, start - 8) : start]) and text[end : end + 1] == ",")
        or (
            _THE_BEFORE.search(text[max(0, start - 6) : start])
            and _SITE_AFTER.search(text[end : end + 16])
        )
    )


# "and" and a street after it: a house number and a street ("and 72 rue Clement Marot"),
# or capitalised words and a house number that ends the phrase ("and Semperweg 139?",
# "and ul. Strażacka 71").
_AND_NUMBER_FIRST = compile_linear(r"^[ \t]+and[ \t]+\d+[A-Za-z]?[ \t]+([\pL.]+)")
_AND_NUMBER_LAST = compile_linear(
    r"^[ \t]+and[ \t]+(?:\p{Lu}[\pL\pM.'-]*[ \t]+|[a-z]{1,4}\.[ \t]+){1,4}\d+[A-Za-z]?"
    r"(?:$|[ \t]*[,.;:?!)\n]|[ \t]+\p{Lu})"
)


def name_of_a_corner(text: str, start: int, end: int) -> bool:
    """A single word joined by "and" to a street ("Kristine and Erhvervsvangen 91",
    "Jakob and 72 rue Clement Marot"): a corner of two streets, as an address names it.
    "Anna and 5 others" and "Tom and Anna 2 years ago" keep their people."""
    if " " in text[start:end].strip():
        return False
    after = text[end : end + 80]
    first = _AND_NUMBER_FIRST.search(after)
    if first is not None:
        word = first.group(1)
        return word[:1].isupper() or word.strip(".").lower() in _STREETS
    return bool(_AND_NUMBER_LAST.search(after))


# A web or mail address around the span ("https://www.PublicityCam.it/").
_WEB_TOKEN = compile_linear(r"(?i)(?:https?://|www\.)[^\s]*$|[^\s@]+@[^\s]*$")


def inside_web_address(text: str, start: int, end: int) -> bool:
    value = text[start:end]
    return (
        "://" in value
        or value.lower().startswith("www.")
        or bool(_WEB_TOKEN.search(text[max(0, start - 80) : start]))
    )


_WORD = compile_linear(r"[\pL\pM'\x{2019}-]+")


def common_noun(text: str, start: int, end: int, names: frozenset[str]) -> bool:
    """A single capitalised word that the same text also writes in lower case, and that no
    name of the name list is ("driven salesperson ... Awarded Salesperson of the Month"):
    a noun capitalised in a title, not a name. "Will said he will call" keeps its Will."""
    word = text[start:end].strip()
    if not word or " " in word or word in names or not word[:1].isupper():
        return False
    lower = word.lower()
    return any(m.group() == lower for m in _WORD.finditer(text))


# A field or a phrase that gives a job ("My job title is Press secretary", "Position:
# Webmaster", "Occupation: Loan underwriter"): what follows is a job, not a person.
_JOB_LABEL = compile_linear(
    r"(?i)\b(?:job[ \t]+title|job|position|occupation|profession)[ \t]*(?::|is|was)[ \t]*$"
)


def job_title(text: str, start: int) -> bool:
    return bool(_JOB_LABEL.search(text[max(0, start - 30) : start]))


# The head nouns of jobs' names: the last words of Faker's en_US jobs (its job provider,
# 639 names) and trades written here. A capitalised word right before one of them in lower
# case is the first word of a job ("Deck officer", "Tow truck dispatcher", "a Dutch Tire
# changer"), not a person.
JOB_HEADS = {
    "accountant", "actor", "actuary", "acupuncturist", "adjuster", "administrator", "adviser",
    "agent", "analyst", "animator", "arboriculturist", "archaeologist", "architect",
    "archivist", "artist", "assessor", "assistant", "astronomer", "attorney", "author",
    "banker", "barista", "barrister", "biochemist", "blower", "bookseller", "breeder",
    "brewer", "broker", "buyer", "cartographer", "chemist", "chiropodist", "chiropractor",
    "clerk", "coach", "comptroller", "conservator", "consultant", "contractor", "controller",
    "conveyancer", "coordinator", "copywriter", "counsellor", "curator", "dancer", "dealer",
    "dentist", "designer", "developer", "dietitian", "director", "doctor", "ecologist",
    "economist", "editor", "embryologist", "engineer", "ergonomist", "examiner",
    "firefighter", "forwarder", "fundraiser", "gaffer", "geneticist", "geologist",
    "geoscientist", "haematologist", "handler", "herbalist", "homeopath", "horticulturist",
    "hydrologist", "hygienist", "illustrator", "immunologist", "inspector", "interpreter",
    "journalist", "lawyer", "lecturer", "lexicographer", "librarian", "lobbyist", "manager",
    "mentor", "merchandiser", "metallurgist", "meteorologist", "microbiologist", "midwife",
    "musician", "neurosurgeon", "nurse", "nutritionist", "oceanographer", "officer",
    "oncologist", "operator", "ophthalmologist", "optician", "optometrist", "organiser",
    "orthoptist", "osteopath", "paramedic", "pathologist", "pharmacist", "pharmacologist",
    "photographer", "physicist", "physiologist", "physiotherapist", "pilot", "planner",
    "podiatrist", "practitioner", "presenter", "printmaker", "processor", "producer",
    "professor", "programmer", "proofreader", "psychiatrist", "psychologist",
    "psychotherapist", "radiographer", "ranger", "representative", "researcher", "restorer",
    "scientist", "secretary", "seismologist", "solicitor", "specialist", "statistician",
    "surgeon", "surveyor", "teacher", "technician", "technologist", "therapist",
    "toxicologist", "trader", "trainer", "translator", "treasurer", "tutor", "underwriter",
    "warden", "worker", "writer",
    # trades and ranks
    "aide", "appraiser", "assembler", "attendant", "auditor", "babysitter", "baker",
    "bartender", "biologist", "bolter", "bookkeeper", "bricklayer", "butcher", "caretaker",
    "carpenter", "cashier", "changer", "chef", "cleaner", "collector", "composer", "conductor",
    "cook", "counselor", "courier", "cutter", "detective", "dispatcher", "drafter", "driver",
    "educator", "electrician", "erector", "estimator", "farmer", "finisher", "fisherman",
    "forecaster", "gardener", "geographer", "grader", "grinder", "guard", "hairdresser",
    "helper", "housekeeper", "installer", "instructor", "investigator", "janitor", "judge",
    "keeper", "laborer", "labourer", "layer", "lifeguard", "loader", "machinist", "maid",
    "marker", "mechanic", "miner", "nanny", "packer", "painter", "physician", "picker",
    "plumber", "polisher", "porter", "presser", "reader", "receptionist", "recruiter",
    "repairer", "reporter", "roofer", "sailor", "salesperson", "salesman", "saleswoman",
    "trimmer", "jumper", "taper", "forester",
    "setter", "singer", "soldier", "songwriter", "sonographer", "sorter", "steward",
    "stocker", "superintendent", "supervisor", "tailor", "teller", "tender", "tester",
    "typist", "veterinarian", "waiter", "waitress", "welder", "vendor", "seller", "merchant",
    "president", "smith",
}  # fmt: skip
# Words that end the look for a job's head: a verb or a function word between the span and
# the head ("Tom met doctor Lee", "Anna and the nurse") makes the head no part of it.
_NO_JOB_MODIFIER = {
    "the", "a", "an", "and", "or", "of", "to", "in", "on", "at", "for", "with", "from", "by",
    "is", "are", "was", "were", "be", "been", "has", "have", "had", "will", "would", "can",
    "could", "may", "might", "must", "shall", "should", "said", "told", "met", "saw", "asked",
    "called", "sent", "gave", "took", "got", "made", "went", "came", "as", "that", "this",
    "who", "which", "our", "my", "your", "his", "her", "their", "its", "not", "also", "just",
    "still", "then", "when", "if", "but", "so", "hired", "needs", "wants", "became", "become",
}  # fmt: skip


def _listed(word: str, words: AbstractSet[str]) -> bool:
    """`word` (in lower case) is in `words`, or is with its plural's -s or -es dropped."""
    return (
        word in words
        or (word.endswith("s") and word[:-1] in words)
        or (word.endswith("es") and word[:-2] in words)
    )


def _job_head(word: str) -> bool:
    if word.endswith(("smen", "ymen", "remen")):  # "Longshoremen", "Handymen", "Craftsmen"
        return True
    return _listed(word, JOB_HEADS)


def job_alone(text: str, start: int, end: int, names: frozenset[str]) -> bool:
    """A single capitalised word that is a job's head and no name of the name list
    ("Librarian at AAON Inc.", "Webmaster"); "Baker", "Porter" and "Judge" stay names."""
    word = text[start:end].strip()
    return " " not in word and word not in names and _job_head(word.lower())


def job_words(text: str, start: int, end: int) -> bool:
    """The span is a job's first words: its head follows in lower case, at most two
    lower-case words later, on the same line ("Deck officer", "Small engine mechanic",
    "Meter readers"). "Tom met doctor Lee" and "Anna hires nurses" keep their people."""
    after = text[end : end + 60]
    if not after.startswith(" "):
        return False
    words = after.split("\n", 1)[0].split()[:3]
    for i, word in enumerate(words):
        bare = word.rstrip(",.;:!?)")
        if not bare.replace("-", "").isalpha() or not bare.islower():
            return False
        if _job_head(bare):
            return True
        if bare != word or bare in _NO_JOB_MODIFIER or bare.endswith(("ed", "s")) or i == 2:
            return False
    return False


def country(
    text: str, start: int, end: int, countries: frozenset[str], names: frozenset[str]
) -> bool:
    """The whole span is the name of a country ("Austria won the match", "AUSTRIA"), in any
    of Faker's locales, and no name of the name list ("Jordan", "India", "Chad" are given
    names too, and stay people)."""
    value = text[start:end].strip()
    if value.isupper():
        value = value.title()
    return value in countries and value not in names


_COUNTRY_AFTER = compile_linear(
    r"^,[ \t]+(\p{Lu}[\pL\pM' -]*?)(?:[.,;:!?)]|[ \t]+[a-z]|[ \t]+[-\x{2013}|/][ \t]|$)"
)


def town_of_a_country(
    text: str, start: int, end: int, countries: frozenset[str], names: frozenset[str]
) -> bool:
    """A town before a comma and its country ("visited Tarnowskie Góry, Poland and loved
    it", "Location: Cite Souihli, Tunisia", "Limassol, Cyprus - emilie@..."), unless every
    word of the span is a name of the name list ("Speakers: Anna Rossi, Italy" keeps its
    person)."""
    m = _COUNTRY_AFTER.search(text[end : end + 50])
    if m is None or m.group(1).strip() not in countries:
        return False
    return not all(w.strip(".") in names for w in text[start:end].split())


def _in_dictionary(word: str, words: frozenset[str]) -> bool:
    """A word of the dictionary in lower case, or its plural ("Sales", "Customs", "Parties")."""
    w = word.lower()
    return _listed(w, words) or (w.endswith("ies") and w[:-3] + "y" in words)


def dictionary_words(
    text: str, start: int, end: int, names: frozenset[str], words: frozenset[str]
) -> bool:
    """A capitalised run of two words or more whose every word is a common word of the
    dictionary (`words`: its lower-case entries), none of them a name of the name list, or
    two of them at least ("Net Promoter Score", "Printed Matter", "Appendix B", "Council Tax
    Band", "Golden Retriever Rescue Gala"): a heading, a product or a term in title case,
    not a person. A letter or a number counts as a word of the run, not as one to look up;
    one word alone is left to the rules that read its context (the dictionary also has
    "kino", "maha" and "jo")."""
    parts = text[start:end].split()
    counted = [
        w
        for part in parts
        for w in part.strip(".,:;()'\"\u2019").split("-")
        if len(w) > 1 and w.isalpha()
    ]
    if len(parts) < 2 or not counted or not all(_in_dictionary(w, words) for w in counted):
        return False
    unnamed = sum(w not in names and w.capitalize() not in names for w in counted)
    return unnamed == len(counted) or unnamed >= 2


_NUMBER_INSIDE = compile_linear(r"\d\S*\s+\p{Lu}")


def not_a_person(text: str, start: int, end: int) -> bool:
    """Whether the words around a capitalised run make it something other than a person. A
    run with a number inside it names none ("Piiri 2-0 New Larisa", a match's score; "Anna
    Berg +1" at a run's end is a guest and her partner)."""
    return (
        bool(_NUMBER_INSIDE.search(text[start:end]))
        or company_name(text, start, end)
        or job_title(text, start)
        or job_words(text, start, end)
        or work_title(text, start, end)
        or day_name(text, start, end)
        or ship_name(text, start)
        or town_line(text, start, end)
        or destination(text, start, end)
        or inside_web_address(text, start, end)
        or name_of_a_corner(text, start, end)
    )


# Street words of many languages, after a house number on the same line.
_STREETS = {
    "street", "st", "road", "rd", "avenue", "ave", "av", "boulevard", "blvd", "lane", "ln",
    "drive", "way", "court", "ct", "place", "pl", "plaza", "square", "sq", "circle",
    "cir", "loop", "ridge", "terrace", "crescent", "close", "mews", "row", "highway", "hwy",
    "parkway", "pkwy", "trail", "rue", "rua", "calle", "carrer", "via", "viale", "piazza",
    "strada", "straße", "strasse", "str", "weg", "platz", "gasse", "allee", "avenida", "avda",
    "paseo", "alameda", "travessa", "laan", "straat", "plein", "gracht", "chemin", "quai",
    "cours", "ul", "postbox", "box", "vej", "gade", "gata", "gatan", "vegen", "veien", "tie",
    "katu", "utca", "út", "útja", "ctra", "ronda", "praça", "largo", "odos", "οδός",
}  # fmt: skip
_STREET_SUFFIXES = (
    "straße", "strasse", "straat", "weg", "vej", "gade", "gatan", "vegen", "veien", "katu",
    "utca", "braut", "allee", "platz", "gasse", "gracht",
)  # fmt: skip
_UNIT_BEFORE = compile_linear(
    r"(?i)\b(?:apt\.?|apartment|suite|unit|flat|box|postbox|p\.?o\.?[ \t]*box)[ \t]+$"
)
# A Brazilian or Portuguese postcode ("29120-320", "4635-115").
_POSTCODE = compile_linear(r"\d{4,5}-\d{3}")
_DIGITS = compile_linear(r"\d+[A-Za-z]?,?")


_UNIT_WORDS = {"apt", "apartment", "suite", "unit", "flat"}


def street_line(line: str) -> bool:
    """A line that names a street or a flat ("34906 Kopfhölzistrasse 45", "Suite 349")."""
    words = [w.strip(",.;:()").lower() for w in line.split()]
    return any(w in _STREETS or w in _UNIT_WORDS or w.endswith(_STREET_SUFFIXES) for w in words)


def house_numbers(text: str, start: int, end: int) -> bool:
    """Numbers of an address, not a phone number: after a flat's, suite's or box's word
    ("Apt. 393 4421 ..."), or with a street on the same line after them ("560 1420
    Lillooet Street", "31825 48 rue Descartes", "004 27852 Hvanneyrarbraut 94"), or a
    postcode's shape ("29120-320")."""
    if _UNIT_BEFORE.search(text[max(0, start - 16) : start]):
        return True
    if _POSTCODE.fullmatch(text[start:end].strip()):
        return True
    line_end = text.find("\n", end)
    after = text[end : line_end if line_end >= 0 else len(text)].replace("\\n", " \n").split()
    words = [w.strip(",.;:()").lower() for w in after[:5]]
    if not words or not words[0][:1].isalpha() or words[0] in ("x", "ext"):
        return False
    # "Dr" is a street's only after its name ("9124 791 Tycos Dr"; "555 1234 Dr Smith").
    if any(
        w in _STREETS or w.endswith(_STREET_SUFFIXES) or (i and w == "dr")
        for i, w in enumerate(words)
    ):
        return True
    return after[0][:1].isupper() and len(after) > 1 and bool(_DIGITS.fullmatch(after[1]))


def shouted_host(value: str) -> bool:
    """A web address without a scheme or `www.` whose host has no lower-case letter: a
    company's legal form or a ticker ("Holdings CO.LTD.", "LYXOR CORE MORN.UK/GBP")."""
    if "://" in value or value.lower().startswith("www."):
        return False
    host = value.split("/", 1)[0]
    return any(c.isalpha() for c in host) and not any(c.islower() for c in host)
