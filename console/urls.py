from __future__ import annotations

from django.urls import path

from console import views

app_name = "console"

urlpatterns = [
    path("models/<str:name>/load", views.load, name="load"),
    path("models/<str:name>/unload", views.unload, name="unload"),
]
