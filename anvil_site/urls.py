from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import AllowAny
from rest_framework.routers import DefaultRouter

from anvil_site import views
from inference.api import ApiKeyViewSet
from routing.api import DecisionViewSet

admin.site.site_header = "Anvil administration"
admin.site.site_title = "Anvil"
admin.site.index_title = "Serves, routing, evals and keys"

api = DefaultRouter()
api.register("keys", ApiKeyViewSet, basename="apikey")
api.register("decisions", DecisionViewSet, basename="decision")

urlpatterns = [
    path("", views.console, name="console"),
    path("console/evals/", include("evals.urls")),
    path("admin/", admin.site.urls),
    # The schema is documentation: public, so clients can generate code from it.
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="api-schema"),
    path("api/", include(api.urls)),
]
