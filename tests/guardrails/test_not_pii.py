"""What the words around a candidate make of it (services/guardrails/not_pii.py): companies,
quoted titles, days, ships, towns of an address block and destinations are no people;
house numbers and postcodes are no phone numbers; a company's legal form in capitals is no
web address. And the people and phone numbers beside them are still found."""

from __future__ import annotations

import pytest

from libs.context import RequestContext
from libs.events import ChatMessage, GuardrailCheck, GuardrailVerdict
from services.guardrails.not_pii import (
    common_noun,
    company_name,
    dictionary_words,
    house_numbers,
    name_of_a_corner,
    not_a_person,
    shouted_host,
    town_line,
)
from services.guardrails.policy import EffectivePolicy
from services.guardrails.screen import Screener


def _verdict(screener: Screener, policy: EffectivePolicy, text: str) -> GuardrailVerdict:
    check = GuardrailCheck(
        ctx=RequestContext(tenant="t", request_id="r"),
        messages=[ChatMessage(role="user", content=text)],
        report=True,
    )
    return screener.check(check, policy)


def _redacted(screener: Screener, policy: EffectivePolicy, text: str) -> str:
    return _verdict(screener, policy, text).texts[0]


def _people(screener: Screener, policy: EffectivePolicy, text: str) -> list[str]:
    return _people_in(_verdict(screener, policy, text), text)


def _people_in(verdict: GuardrailVerdict, text: str) -> list[str]:
    return [text[e.start : e.end] for e in verdict.entities if e.type == "PERSON"]


def _span(text: str, value: str) -> tuple[int, int]:
    start = text.index(value)
    return start, start + len(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Nankai Tatsumura Construction Co.Ltd. is a design agency.", "Nankai Tatsumura"),
        ("The following year at Bharat Heavy Electricals Limited in Pune.", "Bharat Heavy"),
        ("The version recorded for Cimarex Energy Co. sold well.", "Cimarex"),
        ("Corporate Office Properties Trust\n10 Main Street", "Corporate Office"),
        ("FreakOut Holdingsinc. is a bank", "FreakOut"),
        ("Kamakura ShinshoLtd. became the first", "Kamakura"),
        ("which later became Papa John's International in 1999.", "Papa John"),
    ],
)
def test_a_run_with_a_company_word_is_a_company(text: str, value: str) -> None:
    assert company_name(text, *_span(text, value))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Jacob Hamilton of Tenneco Inc. is the CEO of the year.", "Jacob Hamilton"),
        ("We need to add Saraja Trpinc as guardian", "Saraja Trpinc"),
        ("Optigov's Tsuneto Heida, Yonis Bergman of Federal Signal Corporation", "Tsuneto Heida"),
        ("Anna Rossi\nRossi Holdings Ltd.", "Anna Rossi"),
    ],
)
def test_a_person_beside_a_company_stays_a_person(text: str, value: str) -> None:
    assert not not_a_person(text, *_span(text, value))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('His #1? "Tube Snake Boogie" by Bogdana Zagorec.', "Snake Boogie"),
        ("On the last Sunday before Labor Day we flew back.", "Day"),
        ("Happy Mother's Day!", "Day"),
        ("Send it to USNS Lépicier\nFPO AP 55257", "Lépicier"),
        ("Mr. Whittaker flew to Harold on Thursday morning.", "Harold"),
        ("The Princess Royal arrived at Birgi Aerostazione this morning.", "Birgi Aerostazione"),
        ("My website is https://www.PublicityCam.it/", "PublicityCam"),
        ("My website is https://www.UEarly.se/", "https://www.UEarly.se/"),
    ],
)
def test_titles_days_ships_and_destinations_are_no_people(text: str, value: str) -> None:
    assert not_a_person(text, *_span(text, value))


def test_the_town_line_of_an_address_block_is_no_person() -> None:
    block = "Glafira Abakumova\n\n57679 Luite tee 87\n Apt. 319\n Salumäe\n\n Estonia 37164"
    assert town_line(block, *_span(block, "Salumäe"))
    assert not town_line(block, *_span(block, "Glafira Abakumova"))
    glued = "3645 Avenida Visconde Valmor 61 Apt. 440\n   Casal Mato Jardo\n    LI\n"
    assert town_line(glued, *_span(glued, "Casal Mato Jardo"))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("I once lived in 560 1420 Lillooet Street", "560 1420"),
        ("Please update the billing address with 31825 48 rue Descartes Suite 775", "31825 48"),
        ("Ms. Rita Štiglic Apt. 004 27852 Hvanneyrarbraut 94", "004 27852"),
        ("Hello I moved, my new address is 9124 791 Tycos Dr", "9124 791"),
        ("Billing address: Roman Andreev\n   Vila Velha\n    ES\n    29120-320\n", "29120-320"),
    ],
)
def test_house_numbers_and_postcodes_are_no_phone_numbers(text: str, value: str) -> None:
    assert house_numbers(text, *_span(text, value))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Call me at 555 1234 or 555 9876", "555 1234"),
        ("Call 555 1234 Dr Smith's office", "555 1234"),
        ("Tel. 030 1234567 x12", "030 1234567"),
        ("Phone 0161 496 0000 Monday to Friday", "0161 496 0000"),
    ],
)
def test_phone_numbers_followed_by_words_stay_phone_numbers(text: str, value: str) -> None:
    assert not house_numbers(text, *_span(text, value))


def test_a_legal_form_in_capitals_is_no_web_address() -> None:
    assert shouted_host("CO.LTD") and shouted_host("MORN.UK/GBP")
    assert not shouted_host("example.com") and not shouted_host("WWW.EXAMPLE.COM")


@pytest.mark.parametrize(
    ("text", "kept", "hidden"),
    [
        (
            "Anna spent a year at KANMONKAI Co.Ltd. as the assistant to Maria Rossi, and"
            " the following year at Bharat Heavy Electricals Limited in Pune.",
            ["Bharat Heavy Electricals Limited", "KANMONKAI Co.Ltd."],
            ["Anna", "Maria Rossi"],
        ),
        (
            "Hello I moved, please update my new address to 10141 121 Kauri Street Suite 618,"
            " and call me on 415-555-0132.",
            ["10141 121 Kauri Street"],
            ["415-555-0132"],
        ),
        (
            "T.O. Holdings CO.LTD. is the brainchild of our founders: Zagorec, Young and Callahan.",
            ["CO.LTD."],
            ["Zagorec"],
        ),
    ],
)
def test_through_the_screener(
    screener: Screener, policy: EffectivePolicy, text: str, kept: list[str], hidden: list[str]
) -> None:
    out = _redacted(screener, policy, text)
    for value in kept:
        assert value in out, out
    for value in hidden:
        assert value not in out, out


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("My driver's license number is 0737504310399315", "0737504310399315"),
        ("Driving licence no.: MORGA753116SM9IJ, please update it.", "MORGA753116SM9IJ"),
        ("drivers license # D1234567", "D1234567"),
        ("Applicant SSN: none; Licence No.: 306nd7158 (VIC); Form W-4", "306nd7158"),
        ("My licence number is K4471930 and it expires soon.", "K4471930"),
    ],
)
def test_a_named_driving_licence_is_redacted_not_taken_for_a_phone(
    screener: Screener, policy: EffectivePolicy, text: str, value: str
) -> None:
    verdict = _verdict(screener, policy, text)
    assert value not in verdict.texts[0]
    assert [e.type for e in verdict.entities] == ["US_DRIVER_LICENSE"]


def test_a_licence_unnamed_is_left_alone(screener: Screener, policy: EffectivePolicy) -> None:
    text = "The MIT License applies to version 2.14 of the library."
    assert _redacted(screener, policy, text) == text


@pytest.mark.parametrize(
    ("text", "value", "corner"),
    [
        ("Send it to Kristine and Erhvervsvangen 91, please.", "Kristine", True),
        ("Send a new one to Jakob and 72 rue Clement Marot? I am away", "Jakob", True),
        ("It's in Abby and ul. Strażacka 71", "Abby", True),
        ("Send it to Anna and 5 others", "Anna", False),
        ("Tom and Anna 2 years ago went out", "Tom", False),
        ("I met Tom and Anna yesterday", "Tom", False),
    ],
)
def test_a_name_joined_to_a_street_is_a_corner(text: str, value: str, corner: bool) -> None:
    assert name_of_a_corner(text, *_span(text, value)) is corner


def test_a_word_the_text_also_writes_in_lower_case_is_no_name() -> None:
    text = "Driven salesperson with 8 years of sales. Awarded Salesperson of the Month."
    names = frozenset({"Will", "Mark"})
    start = text.index("Salesperson")
    assert common_noun(text, start, start + len("Salesperson"), names)
    will = "Will said he will call"
    assert not common_noun(will, 0, 4, names)
    assert not common_noun("Mark Rossi will mark it", 0, 10, names)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Josef Koutník\n\n972 Árpád fejedelem útja 45.\n Suite 078\n Pomáz", "Josef Koutník"),
        ("}} Hospitality Group Ltd.\n}} Oles Bazhenov\n}} 34906 Kopfhölzistrasse 45", "Bazhenov"),
        ("Billing address: Lucrezia Lettiere\n    3645 Avenida Visconde Valmor 61", "Lettiere"),
        ("Pomeroy Lemelin\n\n6543 Via Solfatara 21\n Suite 985\n Soglio", "Pomeroy Lemelin"),
    ],
)
def test_the_addressee_of_an_address_block_is_a_person(
    screener: Screener, policy: EffectivePolicy, text: str, name: str
) -> None:
    assert name not in _redacted(screener, policy, text)


def test_a_company_over_a_street_is_no_addressee(
    screener: Screener, policy: EffectivePolicy
) -> None:
    text = "Greg Kerr\nNippon Flour Mills Co.Ltd.\n11925 San Andrés 54"
    out = _redacted(screener, policy, text)
    assert "Nippon Flour Mills Co.Ltd." in out and "Greg Kerr" not in out


def test_the_speaker_of_a_quoted_line_is_a_person(
    screener: Screener, policy: EffectivePolicy
) -> None:
    text = 'Gijsbrecht: "Who are you?"\\nJamie:"I\'m Nicole\'s daughter".'
    out = _redacted(screener, policy, text)
    assert "Jamie" not in out and "Nicole" not in out, out
    assert _redacted(screener, policy, 'Customer: "Where is my order?"').startswith("Customer:")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Our supplier is Union Bank of India, based abroad.", "India"),
        ("Shares of Abbott Laboratories fell 3% on Monday.", "Abbott"),
        ("Nippon Yusen Kabushiki Kaisha is hiring engineers.", "Nippon Yusen"),
        ("Shares of US Intermediate Corporate Index (JPY Hedged) fell.", "JPY Hedged"),
        ("My job title is Press secretary.", "Press"),
        ("Position: Webmaster", "Webmaster"),
        ("USS Knotek\nFPO AP 26102", "USS Knotek"),
    ],
)
def test_companies_and_jobs_are_no_people(text: str, value: str) -> None:
    assert not_a_person(text, *_span(text, value))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Please ask Dr. Anna Rossi about it.", "Anna Rossi"),
        ("I met Jordan at the station.", "Jordan"),
        ("Marta, a friend of mine, called.", "Marta"),
        ("Ravi Patel of Union Bank called.", "Ravi Patel"),
        ("I was in the company of Anna Rossi yesterday.", "Anna Rossi"),
        ("The trust of Maria Gomez is strong.", "Maria Gomez"),
    ],
)
def test_people_near_those_words_stay_people(text: str, value: str) -> None:
    assert not not_a_person(text, *_span(text, value))


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Austria won the match.", []),
        ("We hired a Jessica last spring.", ["Jessica"]),
        ("Is there a Kuroudo in your team?", ["Kuroudo"]),
        ("She left Wacker Neuson SE in 2019.", []),
        ("Her family comes from AUSTRIA.", []),
        ("She is Hungarian.", []),
        ("My neighbour is Jamaican and very kind.", []),
        ("I met Jordan at the station.", ["Jordan"]),
        ("Dear French, thanks for the report.", ["French"]),
        ("German Petrov called me yesterday.", ["German Petrov"]),
        # a job's first words before its head in lower case
        ("The Deck officer from the port called about your claim.", []),
        ("Contact person: Hudson Caird, Bulldozer operator, 0049 30 1234567", ["Hudson Caird"]),
        ("The Small engine mechanic is here.", []),
        ("Kadiev's shift: two Meter readers on the night shift.", ["Kadiev"]),
        # a company's word further along its run, over "&", a bracket or a hyphen
        ("According to Rajshree Sugars & Chemicals Limited, revenue grew.", []),
        ("Please bill Agri-Tech (India) Ltd for the parts.", []),
        ("Our supplier Taubman Centers Inc. Series J Cum. Preferred Shs is late.", []),
        ("Ask Maezawa IndustriesInc.. for a quote.", []),
        # a legal form in lower case, after a word in brackets, a joiner or a cut at a dot
        ("John Menzies plc's new store opened.", []),
        ("The Rane (Madras) Limited team met.", []),
        ("Learn how Kulicke and Soffa Industries Inc. works.", []),
        ("Sintesi S.p.A.'s new store is open.", []),
        ("Contract between Maria Rossi and Acme Corp. signed.", ["Maria Rossi"]),
        # a nationality after "a" describes a job; a firm of three surnames
        ("Bio: Bulat Kadiev is a Chechen Silversmith who lives in Peck.", ["Bulat Kadiev"]),
        ("Grant MacDonald, a Scottish Singer, won the award.", ["Grant MacDonald"]),
        ("We audit Johnson, Wallace and Santos LLP this year.", []),
        ("The Hoover, Morris and Johnson shareholders met.", []),
        ("I met Anna, Maria and Tom.", ["Anna", "Maria", "Tom"]),
        # street types of Spanish and Italian addresses before a person's name
        ("I now live in Glorieta Marianela Alegre 5 Piso 7, Almería.", []),
        ("Please send it to Stretto Tiziano, 537, Gratteri.", []),
        # a form's field labels that the name list holds as names
        ("Author: Abraham Gaona | Editor: Andrea Smith", ["Abraham Gaona", "Andrea Smith"]),
        ("Applicant: Jesper Lund; Date of Birth: 5/6/1938", ["Jesper Lund"]),
        ("Jasna: Remember me?\nMason: Sure.", ["Jasna", "Mason"]),
        # a place by what is said of it
        ("Aasiaat is where Sára grew up.", ["Sára"]),
        ("Her IP was 10.0.0.1 when she logged in from Zero Branco.", []),
        ("Peer told me the firm is moving to São Paulo.", ["Peer"]),
        ("Lazkao, a town of 20,000 people.", []),
        # a score inside a run, a town after ", of", a site or an event after a place, a
        # company's trade, a town before its country and a spaced dash
        ("Final score: Tarnby 2-0 West Hollow.", []),
        ("Send it to Viale Leonardi, 12, Milano.", []),
        ("Deliver to 4411 Anna Street tomorrow.", []),
        ("Our bank sponsors the Kolding half-marathon this year.", []),
        ("Meet me at the Hasselt conference on Monday.", []),
        ("We thank Wolfram Research for its support.", []),
        ("Contact: Ida Pedersen - Skive, Denmark - ida@example.com", ["Ida Pedersen"]),
        # headings and terms in title case, of common words (not_pii.dictionary_words)
        ("Presented By: Anna Berg\nAgenda: Pipeline, Churn, Net Promoter Score", ["Anna Berg"]),
        ("Contents: Books (Printed Matter)\nCustoms Declaration CN22 attached", []),
        ("Thank you for your letter regarding Council Tax Band D.", []),
        ("Rose Small wrote the Printed Matter guide.", ["Rose Small"]),
    ],
)
def test_countries_nationalities_jobs_companies_and_places_are_no_people(
    screener: Screener, policy: EffectivePolicy, text: str, found: list[str]
) -> None:
    people = _people(screener, policy, text)
    assert people == found, people


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("In the company of Paul Klug, the evening went well.", "Paul Klug"),
        ("The team includes Gijsbrecht, Thomas and John.", "Gijsbrecht"),
        # the firm rules above leave these people alone
        ("Treffen mit Anna und Siemens AG.", "Anna"),
        ("Approved by Tom Hughes (CFO) Northwind Ltd.", "Tom Hughes"),
        ("James, Thomas and Henry will visit.", "James"),
        ("Sarah, Tom and Emma trust you.", "Sarah"),
        ("Llamé a German Ruiz ayer.", "Ruiz"),
        ("Estrada said the invoice was wrong.", "Estrada"),
        ("Is there a Julieta in your team?", "Julieta"),
        ("She is a colleague of Amber Watson at the bank.", "Amber Watson"),
        ("Kian Brennan won the match for Denmark.", "Kian Brennan"),
        ("Dinner with Hans Filemonsen and an Irish friend.", "Hans Filemonsen"),
        ("Union Bank appointed Georgina Hale as director.", "Georgina Hale"),
        ("Tom met doctor Lee yesterday.", "Lee"),
        ("Tom met doctor Lee yesterday.", "Tom"),
        ("I flew to Anna's wedding in May.", "Anna"),
        ("Please update the address of Ms. Sandberg: 07547 Oldesloer Strasse 79.", "Sandberg"),
        ("Nagisa Ookubo\nVia Lagrange 3\nSutri, Italy", "Ookubo"),
        ("Is Ciset still living at Nuernbergerstrasse 3?", "Ciset"),
        ("We drove to Iceland with Crisólogo and her dog.", "Crisólogo"),
        ("My neighbour Willemine works as a clerk in Segura.", "Willemine"),
        ("RSVP: Sæbjörg Sigþórsdóttir +1, dietary: none.", "Sæbjörg Sigþórsdóttir"),
        ("Anna met Tom at the Berlin conference.", "Anna"),
        ("Maria Rossi, of Anna's team, called.", "Anna"),
        ("John Smith, of course, agreed.", "John Smith"),
        # an age between commas is no house number; nor is an identifier's number
        ("Lena Holm, 41, of Oberwil, was named nurse of the year.", "Lena Holm"),
        ("Ticket 4411 Anna Berg asked about her refund.", "Anna Berg"),
        ("Order 55 John Smith paid twice.", "John Smith"),
    ],
)
def test_people_beside_those_words_are_found(
    screener: Screener, policy: EffectivePolicy, text: str, name: str
) -> None:
    """The rules above read the span's own words or a capitalised company word before
    "of": a person in the company of those words is still a person. So is a name after a
    title where the address tagger calls it a town, a name on the line over a street, and a
    given name no list holds before what only a person does."""
    assert name not in _redacted(screener, policy, text)


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("Please note my new number: 78 439 444. Cheers, Jonah", "78 439 444", "PHONE_NUMBER"),
        ("Your verification code was sent to 35 47 96.", "35 47 96", "PHONE_NUMBER"),
        ("My credit card 060440427114 has been lost.", "060440427114", "CREDIT_CARD"),
        ("Driver Mehdi Berg (licence 347341586) delivered it.", "347341586", "US_DRIVER_LICENSE"),
        ("Your package to Yukiyo Hakugi, 12176 Brunnenstrasse 59, Rossemaison", "Yukiyo Hakugi",
         "PERSON"),
        ("Police report: Louise Gordon, 56, of 1679 Albert St, reported a theft.", "Louise Gordon",
         "PERSON"),
        ("Lecture by Mr. Zak Sanders (Insurance Acquisition Corp.) on Friday.", "Zak Sanders",
         "PERSON"),
        ("Present: Tsuneto Heida, Birlant Desheriyev and Swen Koenig.", "Birlant Desheriyev",
         "PERSON"),
        ("Guest list: Topi N Sainio; Mikkel Nissen; Christopher Numminen", "Mikkel Nissen",
         "PERSON"),
        ("I spoke to Anna via Maria Rossi yesterday.", "Anna", "PERSON"),
        ("The JEOL team includes Junsaku, Christina and Susan.", "Susan", "PERSON"),
        ("We thank Belden Inc. and Franck Charbonneau for their support.", "Franck Charbonneau",
         "PERSON"),
        ("We thank Hallador Energy Company and Ellen Wright.", "Ellen Wright", "PERSON"),
        ("Your statement: card 675987046983, holder Hleb Tikhonov.", "Hleb Tikhonov", "PERSON"),
        ("Hey it's Valida again, new email is below", "Valida", "PERSON"),
        ("RSVP: yes. Contact 73 461 490.", "73 461 490", "PHONE_NUMBER"),
        # a job's title after a name holds company words, and is no company
        ("Best regards,\nAnna Smith Software Engineer", "Anna Smith", "PERSON"),
        ("Please contact Maria Rossi Marketing Director for details.", "Maria Rossi", "PERSON"),
        ("Tom Lee Group Manager will call you.", "Tom Lee", "PERSON"),
    ],
)  # fmt: skip
def test_named_numbers_and_people_beside_addresses_are_found(
    screener: Screener, policy: EffectivePolicy, text: str, value: str, kind: str
) -> None:
    verdict = _verdict(screener, policy, text)
    start, end = _span(text, value)
    assert any(e.type == kind and e.start < end and start < e.end for e in verdict.entities), [
        (e.type, text[e.start : e.end]) for e in verdict.entities
    ]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Hey Ana, did you get the parcel I sent to 8051 43 Rue Hegel Apt. 889?", ["Ana"]),
        ("Send it to Viale Leonardi, 12 please.", []),
        ("Ames Department Stores, Inc. reported a loss.", []),
        ("Interview with Stipo Marinović, Librarian at AAON Inc.", ["Stipo Marinović"]),
        ("Den Haag council approved the plan.", []),
        ("Mr. Painter will see you now.", ["Mr. Painter"]),
        ("We invested in Smith, Lloyd and Jackson last year.", []),
        ("Change the address to the corner of Gartnervænget 37 and Madeline Mills.", []),
        ("The Ceylon Marathon was won by a local runner.", []),
        ("Hayden and I visited Tarnowskie Góry, Poland and loved it.", ["Hayden"]),
        ("Please welcome Ante Bengtsson, Canada.", ["Ante Bengtsson"]),
        ("At the Lavacherie branch, Blanka handled my complaint politely.", ["Blanka"]),
        ("Forecast for Carlos Reyles: rain on Wednesday.", []),
        ("Central Bank Of India acquires LightPath Technologies Inc.", []),
        ("Szonja Tot left Acme to join Barnes & Noble, Inc. in München.", ["Szonja Tot"]),
    ],
)
def test_addresses_companies_and_jobs_stay_no_people(
    screener: Screener, policy: EffectivePolicy, text: str, found: list[str]
) -> None:
    verdict = _verdict(screener, policy, text)
    assert _people_in(verdict, text) == found
    assert not [e for e in verdict.entities if e.type == "PHONE_NUMBER"]


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("Quote from the founder of Treasure Factory Co.LTD. today.", None),
        ("Changyou.com Limited will close its office.", None),
        ("Read the terms at example.com before you sign.", "example.com"),
        ("See shop.example.com Monday for the sale.", "shop.example.com"),
        ('File "/srv/app/export.py", line 88, in run', None),
        ("Fetch https://example.py/app/export.py first.", "https://example.py/app/export.py"),
    ],
)
def test_a_legal_form_or_a_company_named_by_its_domain_is_no_web_address(
    screener: Screener, policy: EffectivePolicy, text: str, url: str | None
) -> None:
    verdict = _verdict(screener, policy, text)
    found = [text[e.start : e.end] for e in verdict.entities if e.type == "URL"]
    assert found == ([url] if url else []), found


_WORDS = frozenset({"net", "promoter", "score", "printed", "matter", "appendix", "rose", "small"})
_NAMES = frozenset({"Rose", "Small", "Anna"})


@pytest.mark.parametrize(
    ("run", "heading"),
    [
        ("Net Promoter Score", True),
        ("Printed Matter", True),
        ("Appendix B", True),
        # Two common words that are no names outweigh one that is.
        ("Rose Printed Matter", True),
        # A name of the list beside one common word; both names; a word the dictionary
        # lacks; one word alone.
        ("Anna Appendix", False),
        ("Rose Small", False),
        ("Kozlowski Matter", False),
        ("Appendix", False),
    ],
)
def test_a_run_of_common_words_is_no_person(run: str, heading: bool) -> None:
    text = f"See {run} today."
    assert dictionary_words(text, 4, 4 + len(run), _NAMES, _WORDS) is heading
