"""English glosses of the words an injection is made of, in other languages, for the
injection classifier.

The classifier learns from word and character n-grams, and nearly all of its training
texts are English: an override in Russian or Chinese shares no n-gram with the English
attacks, and one phrased otherwise than the few generated foreign attacks shares none with
those either. So the classifier reads each text followed by the English words of its
foreign stems, in the order they occur ("Игнорируй все предыдущие инструкции" is read with
"ignore previous instructions"), and what it knows of English attacks carries over. The
stems are written here from the words' ordinary translations, in twelve languages; no stem
is an English word, so an English text reads as it did. A benign text gets its glosses too
("Vergiss nicht, den Bericht zu schicken" is read with "forget"), as it does in training,
but only one that asks for something (an override, a reveal, a role): "what were the
previous rules?" is read as it is.
Pure: no I/O.
"""

from __future__ import annotations

import re

from services.guardrails.linear import compile_linear

# English gloss -> the stems that carry it (lower case; a stem matches a word's start, a
# stem of Chinese, Japanese or Korean anywhere: `_unspaced`).
_STEMS: dict[str, list[str]] = {
    "ignore": [
        "ignorier", "missacht", "ignora ", "ignorez", "ignorar ", "ignori ", "ne tiens pas compte",
        "ne tenez pas compte", "haz caso omiso", "omite", "non tenere conto", "desconsidere",
        "desconsidera", "negeer", "zignoruj", "ignoruj", "игнорир", "не обращай внимания",
        "yok say", "görmezden", "忽略", "无视", "忽视", "無視", "무시",
    ],
    "forget": [
        "vergiss", "vergesst", "vergessen", "oublie", "oubliez", "olvida", "olvide", "dimentica",
        "esqueça", "esqueca", "esquece", "vergeet", "zapomnij", "забудь", "забыть",
        "unut ", "unutun",
        "忘记", "忘掉", "忘れ", "잊어",
    ],
    "previous": [
        "vorherig", "bisherig", "vorigen", "obigen", "précédent", "antérieur",
        "anterior", "previas", "previos", "precedenti", "vorige", "eerdere", "poprzedni",
        "предыдущ", "прежн", "önceki", "之前", "以前", "上述", "これまで", "이전",
    ],
    "instructions": [
        "anweisung", "instruktion", "vorgaben", "consignes", "consigne ", "instrucci",
        "indicaci", "istruzion", "indicazion", "instruç", "orientaç", "instructie",
        "instrukcj", "polecen", "инструкц", "указани", "talimat", "指令", "指示", "命令", "지시",
        "명령",
    ],
    "rules": [
        "regel", "richtlinie", "règle", "regle", "regla", "normas", "regol", "regra", "zasad",
        "reguł", "правил", "kural", "规则", "规定", "ルール", "規則", "규칙",
    ],
    "system prompt": [
        "systemprompt", "systemanweisung", "systemnachricht", "prompt système",
        "invite système", "message système", "prompt del sistema", "mensaje del sistema",
        "prompt di sistema", "prompt de sistema", "systeemprompt", "systeeminstructie",
        "prompt systemow", "системн", "sistem komut", "sistem istem", "系统提示", "系統提示",
        "システムプロンプト", "시스템 프롬프트",
    ],
    "reveal": [
        "enthüll", "verrat", "verrät", "révèle", "révéler", "divulgu", "revela ", "revelar",
        "rivela",
        "revele ", "onthul", "ujawnij", "раскрой", "透露", "泄露", "暴露", "教えて",
        "알려",
    ],
    "restrictions": [
        "einschränkung", "zensur", "beschränkung", "restricci", "censura",
        "restrizion", "restriç", "beperking", "censuur", "ograniczeń", "ograniczen", "cenzur",
        "ограничен", "цензур", "kısıtlama", "sansür", "限制", "审查", "審查", "制限", "検閲",
        "제한", "검열",
    ],
    "hidden": [
        "geheim", "versteckt", "caché", "cachée", "oculto", "oculta", "nascost", "segret",
        "verborg", "ukryt", "tajn", "скрыт", "секрет", "gizli", "隐藏", "秘密", "隠", "숨겨",
        "비밀",
    ],
    "from now on": [
        "ab jetzt", "ab sofort", "von nun an", "à partir de maintenant", "désormais",
        "dorénavant", "a partir de ahora", "desde ahora", "de ahora en adelante", "da ora in poi",
        "d'ora in poi", "da questo momento", "a partir de agora", "de agora em diante",
        "vanaf nu", "od teraz", "отныне", "с этого момента", "bundan sonra", "从现在开始",
        "从现在起", "今から", "これから", "지금부터",
    ],
    "you are now": [
        "du bist jetzt", "du bist nun", "tu es maintenant", "tu es désormais", "ahora eres",
        "adesso sei", "ora sei", "agora você é", "agora és", "je bent nu", "jesteś teraz",
        "теперь ты", "artık sen", "你现在是", "あなたは今", "너는 이제",
    ],
    "show": ["покажи", "покажите"],
    "password": [
        "passwort", "kennwort", "mot de passe", "contraseña", "senha", "wachtwoord", "hasło",
        "пароль", "şifre", "密码", "パスワード", "비밀번호",
    ],
    "pretend": [
        "tu so als", "fais semblant", "finge que", "fingi ", "doe alsof", "udawaj", "притворись",
        "假装", "ふりをして", "척해",
    ],
}  # fmt: skip


# The same concepts in twelve more languages: Ukrainian, Czech, Hungarian, Greek, Swedish,
# Danish and Norwegian, Indonesian, Vietnamese, Arabic, Hebrew, Hindi.
_MORE_STEMS: dict[str, list[str]] = {
    "ignore": [
        "ігнор", "hagyd figyelmen", "αγνόησε", "αγνοήστε", "ignorera", "ignorer ", "abaikan",
        "bỏ qua", "تجاهل", "התעלם", "अनदेखा", "नज़रअंदाज़", "नजरअंदाज",
    ],
    "forget": [
        "zapomeň", "felejtsd", "ξέχασε", "ξεχάστε", "glöm", "glem ", "lupakan", "quên", "שכח",
        "भूल जाओ", "भूल जाइए",
    ],
    "previous": [
        "попередн", "předchozí", "korábbi", "előző", "προηγούμεν", "tidigare", "tidligere",
        "sebelumnya", "trước đó", "السابقة", "הקודמות", "הקודמים", "पिछले",
    ],
    "instructions": [
        "інструкц", "вказівк", "pokyny", "instrukce", "utasítás", "οδηγίες", "instruksjon",
        "instruksi", "petunjuk", "hướng dẫn", "chỉ dẫn", "تعليمات", "הוראות", "निर्देश",
    ],
    "rules": [
        "pravidla", "szabály", "κανόνες", "regler", "aturan", "quy tắc", "قواعد", "כללים",
        "नियम",
    ],
    "system prompt": [
        "systémový prompt", "rendszerprompt", "μήνυμα συστήματος", "prompt sistem",
        "lời nhắc hệ thống", "موجه النظام", "הנחיית מערכת", "הנחיית המערכת", "सिस्टम प्रॉम्प्ट",
    ],
    "reveal": [
        "розкрий", "odhal", "fedd fel", "αποκάλυψε", "avslöja", "afslør", "avslør",
        "ungkapkan", "tiết lộ", "اكشف", "חשוף",
    ],
    "show": [
        "ukaž", "mutasd", "δείξε", "tunjukkan", "hiển thị", "أظهر", "اعرض", "הראה", "दिखाओ",
        "बताओ",
    ],
    "restrictions": [
        "обмежен", "omezení", "korlátoz", "περιορισμ", "begränsning", "begrænsning",
        "begrensning", "batasan", "hạn chế", "قيود", "הגבלות", "प्रतिबंध",
    ],
    "hidden": [
        "прихован", "skryt", "rejtett", "κρυφ", "dolda", "skjult", "tersembunyi", "bị ẩn",
        "مخفية", "נסתר", "מוסתר", "छिपे",
    ],
    "from now on": [
        "відтепер", "od teď", "mostantól", "από τώρα", "från och med nu", "fra nu af",
        "fra nå av", "mulai sekarang", "từ bây giờ", "من الآن", "מעכשיו", "अब से",
    ],
    "you are now": [
        "тепер ти", "teď jsi", "τώρα είσαι", "du är nu", "du er nu", "du er nå",
        "sekarang kamu", "bây giờ bạn là", "أنت الآن", "אתה עכשיו", "अब तुम",
    ],
    "password": [
        "heslo", "jelszó", "κωδικ", "lösenord", "adgangskode", "passord", "kata sandi",
        "mật khẩu", "كلمة المرور", "סיסמה", "पासवर्ड",
    ],
    "pretend": [
        "вдавай", "прикинься", "předstírej", "προσποιήσου", "låtsas", "lad som om", "late som",
        "berpura-pura", "giả vờ", "تظاهر", "העמד פנים", "नाटक करो",
    ],
}  # fmt: skip


def _unspaced(stem: str) -> bool:
    """A stem of a script whose words take prefixes (Hebrew, Arabic, Hindi's compounds) or
    are written without spaces (Chinese, Japanese, Korean): matched anywhere in a word."""
    return any(0x0590 <= ord(c) < 0x0980 or ord(c) >= 0x3000 for c in stem)


_GLOSS_OF = {
    stem: gloss
    for table in (_STEMS, _MORE_STEMS)
    for gloss, stems in table.items()
    for stem in stems
}
# Longest stems first, so that "prompt de sistema" wins over a shorter stem it holds.
_ORDER = sorted(_GLOSS_OF, key=len, reverse=True)
_PATTERN = compile_linear(
    r"(?:^|[^\pL\pN])("
    + "|".join(re.escape(s) for s in _ORDER if not _unspaced(s))
    + ")|("
    + "|".join(re.escape(s) for s in _ORDER if _unspaced(s))
    + ")"
)


# A text is glossed only when it asks for one of these: a question about "the previous
# rules" or a password is no override, and glossed it would be read by its glosses alone
# where the classifier knows none of its own words (such a question in Chinese scored 0.71
# glossed, 0.03 not).
_ACTIONS = {"ignore", "forget", "reveal", "show", "pretend", "from now on", "you are now"}


def gloss(norm: str) -> str:
    """The English glosses of a normalised text's foreign stems, in their order; "" if none
    of them asks for anything (_ACTIONS)."""
    found = [_GLOSS_OF[m.group(1) or m.group(2)] for m in _PATTERN.finditer(norm)]
    return " ".join(found) if _ACTIONS.intersection(found) else ""
