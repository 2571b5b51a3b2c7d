from services.gateway import keys
from services.gateway.policy import Action, may


def test_generated_key_parses_and_matches_only_its_hash() -> None:
    new = keys.generate()
    parsed = keys.parse(new.plaintext)
    assert parsed is not None
    key_id, secret = parsed
    assert key_id == new.key_id
    assert secret not in new.secret_hash
    assert keys.matches(key_id, secret, new.secret_hash)
    assert not keys.matches(key_id, secret[:-1], new.secret_hash)
    assert not keys.matches(keys.generate().key_id, secret, new.secret_hash)


def test_foreign_or_malformed_keys_do_not_parse() -> None:
    for bad in ("", "ek_", "ek__x", "xx_abc_def", "sk-proj-abc", "ek_abc"):
        assert keys.parse(bad) is None


def test_bearer_token() -> None:
    assert keys.bearer_token("Bearer abc") == "abc"
    assert keys.bearer_token("bearer  abc ") == "abc"
    assert keys.bearer_token("Basic abc") is None
    assert keys.bearer_token(None) is None
    assert keys.bearer_token("Bearer ") is None


def test_roles() -> None:
    assert may("user", Action.INFER)
    assert not may("auditor", Action.INFER)
    assert may("auditor", Action.READ_AUDIT)
    assert not may("developer", Action.MANAGE_KEYS)
    assert may("admin", Action.MANAGE_KEYS)
