"""The users page (administrators): accounts and API tokens managed in headless Chromium through the
admin API the page's script calls with the session cookie; what it does is then checked with the
credentials themselves (a token that works, then does not; a login that works, then does not)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.sync_api import Dialog, expect

from cloud.app.db.models import Role
from tests.support.browser import chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory
from tests.support.ui_pages import PHONE, log_in, overflow_px

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass

pytestmark = pytest.mark.slow

PASSWORD = "a-long-password-for-ana"


def login_status(cloud: CloudServer, username: str, password: str) -> int:
    with httpx.Client(base_url=cloud.url, timeout=30, follow_redirects=False) as http:
        return http.post("/login", data={"username": username, "password": password}).status_code


def status_with(cloud: CloudServer, token: str, path: str) -> int:
    with cloud.client(token) as caller:
        return caller.get(path).status_code


def test_an_administrator_manages_a_user_and_its_token(
    cloud: CloudServer, factory: CloudFactory, admin: httpx.Client
) -> None:
    # Accounts first: the factory runs its own event loop, which Playwright's sync API does not allow inside.
    boss = factory.reviewer(Role.ADMIN)
    username = f"ana-{boss.username}"
    token_name = f"ana's laptop {boss.username}"
    asked: list[str] = []
    answers = [True, False, True]  # revocation: yes; deactivation: no the first time, then yes

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        if answers.pop(0):
            dialog.accept()
        else:
            dialog.dismiss()

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.on("dialog", answer)
        log_in(page, cloud.url, boss)
        page.click('nav a[href="/ui/users"]')
        expect(page.locator("h1")).to_have_text("Users and API tokens")

        # Create a reviewer: people get a password field, devices none.
        page.click("#new-user summary")
        page.select_option("#user-form select[name=role]", "device")
        expect(page.locator("#password-field")).to_be_hidden()
        page.select_option("#user-form select[name=role]", "reviewer")
        expect(page.locator("#password-field")).to_be_visible()
        page.fill("#user-form input[name=username]", username)
        page.fill("#user-form input[name=password]", PASSWORD)
        page.click("#user-form button[type=submit]")
        expect(page.locator("#users-status")).to_have_text(f"Created the reviewer {username}.")
        row = page.locator(f'#users tr[data-username="{username}"]')
        expect(row.locator('[data-field="active"]')).to_have_text("yes")
        user_id = row.get_attribute("data-user-id")
        assert user_id is not None
        assert login_status(cloud, username, PASSWORD) == 303

        # The same username again: the API's reason, shown beside the form.
        page.click("#new-user summary")
        page.fill("#user-form input[name=username]", username)
        page.fill("#user-form input[name=password]", PASSWORD)
        page.click("#user-form button[type=submit]")
        expect(page.locator("#user-form-status")).to_contain_text("is taken")

        # A person's account is offered the person roles only; make it an admin.
        options = row.locator("select[name=role] option").all_inner_texts()
        assert options == ["admin", "reviewer"]
        row.locator("select[name=role]").select_option("admin")
        row.locator("form.role-form button").click()
        expect(page.locator("#users-status")).to_have_text(
            f"{username}'s role is now admin, from their next request on."
        )
        roles = {u["id"]: u["role"] for u in admin.get("/api/v1/admin/users").json()}
        assert roles[user_id] == "admin"

        # A token for it: shown once, in a box to copy from, and it works at once.
        page.select_option("#token-form select[name=user_id]", user_id)
        page.fill("#token-form input[name=name]", token_name)
        page.click("#token-form button[type=submit]")
        expect(page.locator("#new-token")).to_be_visible()
        expect(page.locator("#new-token")).to_contain_text("cannot be shown again")
        secret = page.input_value("#new-token-value")
        assert secret.startswith("io_")
        token_row = page.locator(f'#tokens tr[data-name="{token_name}"]')
        expect(token_row).to_contain_text(secret[:20])
        expect(row.locator('[data-field="tokens"]')).to_have_text("1")
        assert status_with(cloud, secret, "/device-api/v1/me") == 200
        assert status_with(cloud, secret, "/api/v1/admin/users") == 200  # the new role is in force

        # Revoke it (asked first): refused from then on.
        token_row.locator('button[data-action="revoke"]').click()
        expect(token_row.locator('button[data-action="revoke"]')).to_have_count(0)
        expect(token_row.locator('[data-field="revoked"]')).to_contain_text("UTC")
        expect(row.locator('[data-field="tokens"]')).to_have_text("0")
        assert status_with(cloud, secret, "/device-api/v1/me") == 401

        # Deactivate it: no at the question changes nothing; yes reloads the page with a note.
        row.locator('button[data-action="deactivate"]').click()
        expect(row.locator('[data-field="active"]')).to_have_text("yes")
        assert login_status(cloud, username, PASSWORD) == 303
        row.locator('button[data-action="deactivate"]').click()
        expect(page.locator("#users-status")).to_have_text(f"Deactivated {username}.")
        expect(row).to_have_attribute("data-active", "false")
        expect(row.locator('button[data-action="activate"]')).to_be_visible()
        # The secret is not on the reloaded page (it is stored hashed), its snippet is.
        assert secret not in page.content() and secret[:20] in page.content()
        page.close()
    assert login_status(cloud, username, PASSWORD) == 401
    assert len(asked) == 3 and all(f"Deactivate {username}?" in q for q in asked[1:])
    assert f"Revoke the token {token_name}?" in asked[0]


def test_the_users_page_and_role_changes_are_for_administrators(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    reader, boss = factory.reviewer(), factory.reviewer(Role.ADMIN)
    with httpx.Client(base_url=cloud.url, timeout=30, follow_redirects=False) as http:
        assert http.get("/ui/users").status_code == 303  # no session: to the login page
    reviewer = cloud.login(reader.username, reader.password)
    try:
        refused = reviewer.get("/ui/users")
        assert refused.status_code == 403 and "administrators" in refused.text
        assert 'href="/ui/users"' not in reviewer.get("/ui/queues").text
        patched = reviewer.patch(f"/api/v1/admin/users/{reader.user_id}", json={"role": "admin"})
        assert patched.status_code == 403
    finally:
        reviewer.close()
    administrator = cloud.login(boss.username, boss.password)
    try:
        assert 'href="/ui/users"' in administrator.get("/ui/queues").text
        # Not even through the page's own API: an admin keeps their role and their account.
        own = f"/api/v1/admin/users/{boss.user_id}"
        demoted = administrator.patch(own, json={"role": "reviewer"})
        assert demoted.status_code == 409 and "your own account" in demoted.json()["detail"]
        assert administrator.post(f"{own}/deactivate").status_code == 409
        page = administrator.get("/ui/users").text
    finally:
        administrator.close()
    # Their own row offers neither.
    own_row = page.split(f'data-user-id="{boss.user_id}"', 1)[1].split("</tr>", 1)[0]
    assert "role-form" not in own_row and "deactivate" not in own_row


def test_the_users_page_fits_a_phone_in_dark_mode(cloud: CloudServer, factory: CloudFactory) -> None:
    boss = factory.reviewer(Role.ADMIN)
    with chromium() as browser:
        page = browser.new_page(viewport=PHONE, color_scheme="dark")
        log_in(page, cloud.url, boss)
        page.goto(f"{cloud.url}/ui/users")
        page.click("#new-user summary")
        page.select_option("#token-form select[name=user_id]", boss.user_id)
        page.fill("#token-form input[name=name]", "phone check")
        page.click("#token-form button[type=submit]")
        expect(page.locator("#new-token")).to_be_visible()
        assert overflow_px(page) == 0
        colours = page.evaluate(
            "[getComputedStyle(document.querySelector('.card')).backgroundColor,"
            " getComputedStyle(document.querySelector('#users tbody tr')).backgroundColor,"
            " getComputedStyle(document.querySelector('#new-token-value')).color]"
        )
        page.close()
    assert colours == ["rgb(23, 28, 38)", "rgb(23, 28, 38)", "rgb(230, 233, 239)"]
