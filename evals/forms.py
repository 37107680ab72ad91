"""The console's eval forms: they parse what an operator typed; the domain actions decide what it means."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from evals.runs import RUNNERS
from serves.models import Serve


class StartRunForm(forms.Form):
    kind = forms.ChoiceField()
    serve = forms.ChoiceField(required=False, help_text="a serve from the serves table")
    base_url = forms.CharField(required=False, max_length=300, label="or base URL",
                               widget=forms.TextInput(attrs={"placeholder": "http://127.0.0.1:8000/v1"}))
    model = forms.CharField(required=False, max_length=200, label="and model")
    parameters = forms.CharField(required=False, initial="{}", label="parameters (JSON)",
                                 widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read when the form is made, not imported: runners registered later, and serves added since, show up.
        self.fields["kind"].choices = [(kind, kind) for kind in sorted(RUNNERS)]
        self.fields["serve"].choices = [("", "(none)")] + [
            (name, f"{name} ({tier})") for name, tier in Serve.objects.order_by("name").values_list("name", "tier")]

    def clean_base_url(self) -> str:
        return self.cleaned_data["base_url"].strip()

    def clean_model(self) -> str:
        return self.cleaned_data["model"].strip()

    def clean_parameters(self) -> dict[str, Any]:
        text = self.cleaned_data["parameters"].strip() or "{}"
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise forms.ValidationError('parameters are a JSON object, e.g. {"min_quality": 0.8}')
        return parsed


class OverrideForm(forms.Form):
    score = forms.FloatField(min_value=0.0, max_value=1.0)
    note = forms.CharField(max_length=2000, error_messages={"required": "an override needs a note saying why"})


class PromoteForm(forms.Form):
    token = forms.CharField(max_length=64, error_messages={
        "required": "the diff's token is missing: promote from the profile page, after reviewing the diff"})
