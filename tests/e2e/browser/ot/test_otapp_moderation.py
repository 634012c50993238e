"""Moderation as the OpenTok.js guide writes it, on salon in Chromium.

A moderator's page (a moderator token) forces a participant's page (the basic video chat app)
to mute, lets it unmute, mutes everyone, stops its stream and disconnects it; the participant
sees ``muteForced``, its publisher's ``streamDestroyed`` with reason ``forceUnpublished`` and
``sessionDisconnected`` with reason ``forceDisconnected``, as OpenTok.js reports them.

Every client's *Session* ``muteForced`` carries ``active``: ``true`` in every client on
``forceMuteAll``, ``false`` on ``disableForceMute``, and none on ``forceMuteStream`` (only the
muted Publisher's ``muteForced``), as OpenTok.js dispatches them.
"""

from __future__ import annotations

import re

import pytest
from otapp_helpers import AppServer, app_log, open_app, video_plays, wait_log, wait_true
from playwright.async_api import Browser, expect

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(300)

HAS_AUDIO = "() => publisher.stream ? publisher.stream.hasAudio : null"


async def test_moderator_mutes_unpublishes_and_disconnects_a_participant(
    media_server: RunningServer, app_server: AppServer, browser: Browser
) -> None:
    session_id = media_server.session()
    config = {"api_key": media_server.api_key, "session_id": session_id}
    moderator = await open_app(
        browser,
        app_server.page("moderation", token=media_server.token(session_id, "moderator"), **config),
        "moderator",
    )
    for capability in ("forceDisconnect", "forceUnpublish", "forceMute"):
        await wait_log(moderator, f"can {capability}")
    participant = await open_app(
        browser, app_server.page("video-chat", token=media_server.token(session_id), **config), "participant"
    )
    await wait_log(participant, r"publishing \S+")
    await wait_log(moderator, "connectionCreated")
    await wait_log(moderator, "streamCreated hasAudio=true")
    await video_plays(moderator, "#subscribers .OT_subscriber video")

    # A participant is no moderator: its capabilities say so and moderation is refused.
    refused = await participant.evaluate(
        """async () => ({
            capabilities: [session.capabilities.forceDisconnect, session.capabilities.forceUnpublish,
                           session.capabilities.forceMute],
            error: await session.forceMuteAll().then(() => null, (e) => e.name),
        })"""
    )
    assert refused == {"capabilities": [0, 0, 0], "error": "OT_PERMISSION_DENIED"}, refused

    # forceMuteStream: the participant's audio goes off; its Publisher says muteForced.
    controls = moderator.locator("#controls")  # (the subscriber widget has a "Mute" button too)
    await controls.get_by_role("button", name="Mute", exact=True).click()
    await wait_log(moderator, "forceMuteStream done")
    await wait_log(participant, "publisher muteForced")
    await wait_true(participant, f"() => ({HAS_AUDIO})() === false", what="the participant's hasAudio false")
    await wait_log(moderator, "streamPropertyChanged hasAudio true -> false")
    # Its default UI shows it muted; the user unmutes with the widget's own mute button.
    mute_button = participant.locator("#publisher .OT_publisher .OT_mute")
    await expect(mute_button).to_have_class(re.compile(r"(^|\s)OT_active(\s|$)"), timeout=30000)
    await mute_button.click()
    await wait_true(
        participant, f"() => ({HAS_AUDIO})() === true", what="the participant's hasAudio true again"
    )
    await wait_log(moderator, "streamPropertyChanged hasAudio false -> true")

    # forceMuteAll mutes it again (its Publisher says muteForced); disableForceMute resolves.
    await controls.get_by_role("button", name="Mute all").click()
    await wait_log(moderator, "forceMuteAll done")
    await wait_true(
        participant,
        "() => log.filter((e) => e === 'publisher muteForced').length === 2",
        what="a second muteForced of the participant's Publisher",
    )
    await wait_true(
        participant, f"() => ({HAS_AUDIO})() === false", what="the participant muted by forceMuteAll"
    )
    # Every client's Session says mute-all is on (none said anything for forceMuteStream).
    for page in (participant, moderator):
        await wait_log(page, "muteForced true")
    await controls.get_by_role("button", name="Allow unmute").click()
    await wait_log(moderator, "disableForceMute done")
    for page in (participant, moderator):
        await wait_log(page, "muteForced false")

    # forceUnpublish: the participant's publisher stream ends, the participant stays connected.
    await controls.get_by_role("button", name="Stop their stream").click()
    await wait_log(moderator, "forceUnpublish done")
    await wait_log(participant, "publisher streamDestroyed forceUnpublished")
    await wait_log(moderator, "streamDestroyed forceUnpublished")
    # As in OpenTok.js, the publisher's element leaves the page (the app did not preventDefault).
    await expect(participant.locator("#publisher .OT_publisher")).to_have_count(0, timeout=30000)
    await expect(moderator.locator("#subscribers .OT_subscriber")).to_have_count(0, timeout=30000)
    assert await participant.evaluate("session.connection !== null && session.connection !== undefined")

    # forceDisconnect: the participant leaves the session.
    await controls.get_by_role("button", name="Disconnect them").click()
    await wait_log(moderator, "forceDisconnect done")
    await wait_log(participant, "sessionDisconnected forceDisconnected")
    await wait_log(moderator, "connectionDestroyed forceDisconnected")
    log = await app_log(participant)
    assert not [e for e in log if e.startswith("error")], log
    # One Publisher muteForced per forced mute (forceMuteStream, forceMuteAll), no more.
    assert log.count("publisher muteForced") == 2, log
    # One Session muteForced per mute-all switch, in each page.
    for entries in (log, await app_log(moderator)):
        assert [e for e in entries if e.startswith("muteForced")] == [
            "muteForced true",
            "muteForced false",
        ], entries
