"""The console's forms: what an operator may type, checked before a domain function sees it."""

from __future__ import annotations

from typing import Any

from django import forms

from inference.models import BudgetPeriod, Scope


class NewKeyForm(forms.Form):
    name = forms.SlugField(max_length=64, help_text="Who or what uses it: letters, digits, - and _.")
    scopes = forms.MultipleChoiceField(choices=Scope.choices, initial=[Scope.INFERENCE],
                                       widget=forms.CheckboxSelectMultiple)
    reach = forms.CharField(required=False, help_text='Globs over models, serves and "tier:NAME", space-separated; '
                            "blank: everything.")
    allow_remote = forms.BooleanField(required=False, initial=True, label="May use the metered tiers")
    rpm = forms.IntegerField(required=False, min_value=1, label="Requests per minute")
    tpm = forms.IntegerField(required=False, min_value=1, label="Tokens per minute")
    max_concurrent = forms.IntegerField(required=False, min_value=1, label="Requests at once")
    budget_usd = forms.DecimalField(required=False, min_value=0.0001, max_digits=12, decimal_places=4,
                                    label="Budget (USD)")
    budget_period = forms.ChoiceField(choices=BudgetPeriod.choices, initial=BudgetPeriod.MONTH, label="per")

    def settings(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {"reach": data["reach"].split(), "allow_remote": data["allow_remote"], "rpm": data["rpm"],
                "tpm": data["tpm"], "max_concurrent": data["max_concurrent"], "budget_usd": data["budget_usd"],
                "budget_period": data["budget_period"]}
