from __future__ import annotations

from django.urls import path

from console.pages import keys, models, playground, traffic

app_name = "console"

urlpatterns = [
    path("models/<str:name>/load", models.load, name="load"),
    path("models/<str:name>/unload", models.unload, name="unload"),
    path("playground/", playground.playground, name="playground"),
    path("keys/", keys.keys, name="keys"),
    path("traffic/", traffic.traffic, name="traffic"),
    path("traffic/<uuid:pk>/", traffic.decision, name="decision"),
    path("keys/<str:name>/revoke", keys.revoke, name="revoke"),
    path("keys/<str:name>/restore", keys.restore, name="restore"),
]
