"""External providers: which tenant may send which model to which provider.

Off by default: a provider (an OpenAI-compatible server outside the platform) is reachable
for a tenant only after an admin enabled it for that tenant, and only for the models on
that tenant's allow-list. Pure: the admin API stores these records; the router asks
`external_allowed` before it routes a request to an external pool, and `tenant_upstream`
for where that pool sends the tenant's request.

A tenant's settings take effect: its `base_url` replaces the pool's (its own account or
deployment of the provider), with its own key or none (the platform's key is never sent
to an address a tenant chose); its key alone keeps the pool's address; its `models`
mapping names the upstream's model. Without any of them the pool's own settings serve.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from libs.errors import EnclaveError
from libs.events import Upstream


class Provider(BaseModel):
    """An OpenAI-compatible upstream. `api_key` is sealed (libs.secret_box), never plain."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    base_url: str  # e.g. https://api.openai.com/v1 or http://10.0.0.5:8000/v1
    api_key: str = ""  # "enc:v1:..." or empty for an upstream without a key
    # Model ids the provider knows, by the name the platform gives them (the upstream's
    # own name where it differs): {"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}.
    models: dict[str, str] = Field(default_factory=dict)


class TenantProvider(BaseModel):
    """One tenant's enablement of one provider: the models it may send there."""

    tenant: str
    provider: str
    enabled: bool = False
    allowed_models: list[str] = Field(default_factory=list)
    base_url: str = ""  # empty: the pool's
    api_key: str = ""  # sealed (enc:v1:...), or empty
    models: dict[str, str] = Field(default_factory=dict)  # platform name -> upstream's


def external_allowed(
    grants: list[TenantProvider], tenant: str, provider: Provider, model: str
) -> str:
    """The upstream's model name for this tenant's request, or the 403 that says why not."""
    grant = next((g for g in grants if g.tenant == tenant and g.provider == provider.name), None)
    if grant is None or not grant.enabled:
        raise EnclaveError(
            403,
            f"The provider `{provider.name}` is not enabled for this tenant.",
            "provider_not_enabled",
            param="model",
        )
    if model not in grant.allowed_models or model not in provider.models:
        raise EnclaveError(
            403,
            f"The model `{model}` may not be sent to the provider `{provider.name}`.",
            "model_not_allowed",
            param="model",
        )
    return provider.models[model]


def url_allowed(url: str, prefixes: list[str]) -> bool:
    """Whether a tenant may name `url` as its provider's address: any, without prefixes;
    else one of them, whole or up to a "/" (`https://a.example` is not
    `https://a.example.evil`)."""
    if not prefixes:
        return True
    return any(
        url == p.rstrip("/") or url.startswith(p if p.endswith("/") else p + "/") for p in prefixes
    )


def tenant_upstream(
    grant: TenantProvider, pool_base_url: str, pool_model: str, model: str
) -> Upstream | None:
    """Where a pool of the grant's provider sends this tenant's `model`: None when the
    tenant changed nothing (the pool's own address, key and model serve)."""
    upstream_model = grant.models.get(model) or pool_model
    if not grant.base_url and not grant.api_key:
        if upstream_model == pool_model:
            return None
        # Only the model's name differs: an empty base_url keeps the pool's address and key.
        return Upstream(base_url="", model=upstream_model)
    return Upstream(
        base_url=(grant.base_url or pool_base_url).rstrip("/"),
        api_key=grant.api_key,
        model=upstream_model,
    )
