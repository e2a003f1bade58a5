"""Helpers for tests that drive the app in-process with settings of their own."""

from __future__ import annotations

import threading

from api.app import create_app


def app_client(settings, **overrides):
    from fastapi.testclient import TestClient

    return TestClient(create_app(settings.model_copy(update=overrides)))


def in_thread(call) -> tuple[threading.Thread, list]:
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(call()))
    thread.start()
    return thread, answers
