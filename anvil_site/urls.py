from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import AllowAny
from rest_framework.routers import DefaultRouter

from console.pages import models as console_models
from inference.api import ApiKeyViewSet, UsageView
from routing.api import DecisionViewSet

admin.site.site_header = "Anvil administration"
admin.site.site_title = "Anvil"
admin.site.index_title = "Serves, routing, evals and keys"

api = DefaultRouter()
api.register("keys", ApiKeyViewSet, basename="apikey")
api.register("decisions", DecisionViewSet, basename="decision")

# A database that is down is a 503 with Retry-After, not Django's bare 500 page.
handler500 = "anvil_site.error_pages.server_error"

urlpatterns = [
    path("", console_models.models, name="console"),
    path("console/", include("console.urls")),
    path("console/evals/", include("evals.urls")),
    path("admin/", admin.site.urls),
    # The schema is documentation: public, so clients can generate code from it.
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="api-schema"),
    path("api/usage/", UsageView.as_view(), name="api-usage"),
    path("api/", include(api.urls)),
]
