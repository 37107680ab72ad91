# Issue 18: a run whose gate failed says so in its status; a check that could not run is a harness
# error, not a grade; every promotion of the quality profile is kept as a version that can be restored.

import django.db.models.deletion
from django.db import migrations, models


def gate_failures_get_their_status(apps, schema_editor):
    apps.get_model("evals", "EvalRun").objects.filter(status="succeeded", gate_passed=False).update(
        status="gate_failed")


def gate_failures_were_succeeded(apps, schema_editor):
    apps.get_model("evals", "EvalRun").objects.filter(status="gate_failed").update(status="succeeded")


def harness_errors_were_errors(apps, schema_editor):
    apps.get_model("evals", "EvalResult").objects.filter(verdict="harness_error").update(verdict="error")


class Migration(migrations.Migration):

    dependencies = [
        ('evals', '0002_run_lease'),
    ]

    operations = [
        migrations.AlterField(
            model_name='evalrun',
            name='status',
            field=models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('gate_failed', 'gate failed'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], default='queued', max_length=16),
        ),
        migrations.RunPython(gate_failures_get_their_status, gate_failures_were_succeeded),
        migrations.AlterField(
            model_name='evalresult',
            name='verdict',
            field=models.CharField(choices=[('pass', 'Pass'), ('fail', 'Fail'), ('graded', 'Graded'), ('error', 'Error'), ('harness_error', 'harness error'), ('budget-exhausted', 'reasoning budget exhausted'), ('skipped', 'Skipped')], max_length=20),
        ),
        migrations.RunPython(migrations.RunPython.noop, harness_errors_were_errors),
        migrations.AlterModelOptions(
            name='profilepromotion',
            options={'ordering': ['-promoted_at', '-pk'], 'verbose_name': 'profile version'},
        ),
        migrations.AddField(
            model_name='profilepromotion',
            name='action',
            field=models.CharField(choices=[('promote', 'Promote'), ('revert', 'Revert'), ('kept', 'Kept')], default='promote', max_length=16),
        ),
        migrations.AddField(
            model_name='profilepromotion',
            name='entries',
            field=models.JSONField(blank=True, help_text="The live profile's rows as this version made them; blank for promotions from before versions were kept.", null=True),
        ),
        migrations.AddField(
            model_name='profilepromotion',
            name='restored_from',
            field=models.ForeignKey(blank=True, help_text='The version a revert restored.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='restorations', to='evals.profilepromotion'),
        ),
        migrations.AlterField(
            model_name='profilepromotion',
            name='candidate_token',
            field=models.CharField(blank=True, help_text='Digest of the diff that was promoted or reverted.', max_length=64),
        ),
    ]
