"""Sign-in at the organisation's identity provider across replicas (`[[identity_providers]]`).

Three replicas on one PostgreSQL behind nginx, each with its own empty data dir, and the
real OpenID provider of test_sso.py (sso_idp.py). Every replica's public URL is nginx's,
so the provider knows one redirect URI, `<fleet.url>/login/callback`; the tests still send
each step to a replica of their choosing, at its own address, so which replica does what
is fixed rather than left to the balancer:

- a sign-in started on one replica is finished on another (the sealed `mog_login` cookie
  opens there: its key derives from the fleet's key-encryption key, not the data dir; the
  pending request is in the database) and approved on a third;
- the provider's tokens, sealed in the shared vault by the replica that finished the
  sign-in, reach the upstream through every replica; revoking a grant on one replica ends
  the sign-in for the others: another grant of the person's is not refreshed elsewhere.

The browser is test_sso's (an httpx client with a cookie jar: cookies ignore ports, so
the gateway's cookies go to every replica, as a browser's would to the one public name).
Like a browser on a page of fleet.url, it sends `Origin: <fleet.url>` on its form posts to
the gateway.
"""

from __future__ import annotations

import copy
import time
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import httpx

from flow import McpClient, refresh
from test_sso import (DOMAIN_RULES, HEADERS, RecordingUpstream, SignIn, browser,
                      oidc_provider_toml, secret_file, whoami)
from test_sso import idp  # noqa: F401 - test_sso's provider (module scope), a fixture here


# Revocations reach every replica within a second (test_fleet.py); the drop of a
# person's provider tokens rides on them. Twice that, for a loaded CI machine.
DROP_BOUND = 2.0

def sso_fleet(fleet, idp, tmp_path, body: str, *extra_args: str):
    """A fleet whose config is `body`; the provider is told the fleet's one callback."""
    cfg = tmp_path / "sso-fleet.toml"
    cfg.write_text(body)
    f = fleet(extra_args=["--config", str(cfg), *extra_args])
    idp.allow_redirect_uris([f"{f.url}/login/callback"])
    return f


def fleet_browser(f) -> httpx.Client:
    """test_sso's browser, sending `Origin: <fleet.url>` on its posts to the gateway."""
    b = browser()
    gateway = {urlsplit(u).netloc for u in [f.url, *(r.base for r in f.replicas)]}

    def origin(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.netloc.decode() in gateway:
            request.headers["Origin"] = f.url

    b.event_hooks = {"request": [origin]}
    return b


class FleetSignIn(SignIn):
    """test_sso's SignIn for a fleet: the client registers at and asks for the public URL
    (its resource is `<fleet.url>/mcp`); `at(i)` is the same sign-in with its steps sent
    to replica i directly (a copy: `s.at(2).approve(s.at(1).login_page())` means what it
    says), and the code is redeemed through nginx."""

    def __init__(self, f, b: httpx.Client, scope: str = "mcp:read mcp:write"):
        self.fleet, self.public = f, SimpleNamespace(base=f.url)
        super().__init__(self.public, b, scope)

    def at(self, i: int) -> "FleetSignIn":
        there = copy.copy(self)
        there.gw = self.fleet.replicas[i]
        return there

    def tokens(self, code: str):
        public = copy.copy(self)
        public.gw = self.public
        return SignIn.tokens(public, code)


def to_replica(callback: str, replica) -> str:
    """The provider's redirect to `<fleet.url>/login/callback?...`, sent to `replica`."""
    parts = urlsplit(callback)
    return urlunsplit(parts._replace(netloc=urlsplit(replica.base).netloc))


def served_by(f, message: str) -> list[int]:
    """The replicas whose log has `message`."""
    return [i for i, r in enumerate(f.replicas) if message in r.log_tail(2000)]


def consented_on(f, client_id: str) -> list[int]:
    """The replicas that logged the consent of `client_id` (one line with both fields, in
    whatever order the audit line puts them)."""
    return [i for i, r in enumerate(f.replicas)
            if any('event="consent_granted"' in line and f"client_id={client_id} " in line
                   for line in r.log_tail(2000).splitlines())]


def test_a_sign_in_started_on_one_replica_finishes_on_another(fleet, idp, tmp_path):
    f = sso_fleet(fleet, idp, tmp_path,
                  oidc_provider_toml(idp, secret_file(tmp_path, idp), DOMAIN_RULES))
    with fleet_browser(f) as b:
        s = FleetSignIn(f, b)
        r = s.at(0).leave_for_provider()
        assert "mog_login" in r.headers["set-cookie"]
        callback = idp.sign_in(b, r.headers["location"], "alice")
        assert callback.startswith(f"{f.url}/login/callback?"), callback
        consent = s.at(1).back(to_replica(callback, f.replicas[1]))
        assert consent.status_code == 200, f"callback on replica 1: {consent.text[:500]}"
        assert "mog_session" in consent.headers.get("set-cookie", "")
        code = s.at(2).approve(consent)
        tokens = s.tokens(code)
    assert served_by(f, "sent to the identity provider") == [0]
    assert served_by(f, "signed in at the identity provider") == [1]
    assert consented_on(f, s.client_id) == [2]
    assert tokens.scope.split() == ["mcp:read", "mcp:write"]
    me = whoami(SimpleNamespace(base=f.url), tokens.access_token)
    assert me["email"] == "alice@example.com" and me["name"] == "Alice Example"
    assert me["sub"] == f"{idp.issuer}#alice-0001"


def upstream_token_via(up: RecordingUpstream, base: str, token: str) -> str | None:
    """The provider token the upstream got for an MCP initialize at `base` (None: none)."""
    up.headers.clear()
    with httpx.Client(timeout=30.0) as http:
        reply = McpClient(http, base, token).initialize()
    assert reply.status == 200, f"{base}: {reply.status} {reply.text[:300]}"
    sent = {h.get("x-upstream-token") for h in up.headers}
    assert len(sent) == 1, f"{base}: {sent}"
    return sent.pop()


def test_the_vault_is_shared_and_a_revocation_on_one_replica_ends_the_sign_in(
        fleet, idp, tmp_path):
    up = RecordingUpstream()
    try:
        f = sso_fleet(fleet, idp, tmp_path,
                      oidc_provider_toml(idp, secret_file(tmp_path, idp), DOMAIN_RULES) + HEADERS,
                      "--upstream", up.url)
        with fleet_browser(f) as b:
            first = FleetSignIn(f, b)
            r = first.at(0).leave_for_provider()
            callback = idp.sign_in(b, r.headers["location"], "alice")
            tokens = first.tokens(first.at(0).approve(
                first.at(0).back(to_replica(callback, f.replicas[0]))))
            assert served_by(f, "signed in at the identity provider") == [0]
            # Replicas 1 and 2 never saw the sign-in: they open what replica 0 sealed.
            sent = [upstream_token_via(up, r.base, tokens.access_token) for r in f.replicas]
            assert sent[0] and sent == [sent[0]] * 3, "every replica sends the same token"
            status, info = idp.userinfo(sent[0])
            assert status == 200 and info["sub"] == "alice-0001", "a live token of the provider"

            # A second client of alice's, approved in the same browser session on replica 1
            # (signed in: straight to consent), the consent posted on replica 2.
            second = FleetSignIn(f, b)
            other = second.tokens(second.at(2).approve(second.at(1).login_page()))
            assert consented_on(f, second.client_id) == [2]

            with httpx.Client(timeout=30.0) as http:
                r = http.post(f"{f.replicas[0].base}/revoke",
                              data={"token": tokens.refresh_token, "client_id": first.client_id})
                assert r.status_code == 200, r.text
                for i in (1, 2):
                    r = refresh(http, f.replicas[i].base, second.client_id, other.refresh_token)
                    assert r.status_code == 400, f"replica {i}: {r.status_code} {r.text}"
                    assert r.json()["error"] == "invalid_grant", r.text
                    assert "authorize again" in r.json()["error_description"]
            # The replica that revoked sends no provider token for alice any more, and the
            # others stop within the revocation bound: the drop travels with the revocations.
            assert upstream_token_via(up, f.replicas[0].base, other.access_token) is None
            start = time.monotonic()
            waiting = {1, 2}
            while waiting and time.monotonic() - start < DROP_BOUND:
                for i in sorted(waiting):
                    if upstream_token_via(up, f.replicas[i].base, other.access_token) is None:
                        waiting.discard(i)
            assert not waiting, f"replicas {waiting} still send a token dropped {DROP_BOUND} s ago"
            # Her browser session ended on every replica: the sign-in page again.
            for i in (1, 2):
                page = FleetSignIn(f, b).at(i).login_page()
                assert "Sign in with Corp SSO" in page.text, f"replica {i} still has a session"
    finally:
        up.close()
