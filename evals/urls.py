"""The console's eval pages, mounted at /console/evals/ (anvil_site/urls.py)."""

from __future__ import annotations

from django.urls import path

from evals import views

app_name = "evals"

urlpatterns = [
    path("", views.runs, name="runs"),
    path("runs/start/", views.start_run, name="start_run"),
    path("runs/<int:run_id>/", views.run, name="run"),
    path("runs/<int:run_id>/cancel/", views.cancel, name="cancel"),
    path("review/", views.review, name="review"),
    path("review/<int:grade_id>/accept/", views.accept, name="accept"),
    path("review/<int:grade_id>/override/", views.override, name="override"),
    path("profile/", views.profile, name="profile"),
    path("profile/promote/", views.promote, name="promote"),
    path("profile/versions/<int:version_id>/revert/", views.revert, name="revert"),
    path("serves/<slug:serve>/reeval/", views.reeval, name="reeval"),
]
