# Judges and live calibration (issue 18 §5, §6): a suite's judge serve, the judge and calibration
# run kinds, the calibration grade source, and the per serve × work class sampling settings.
#

import django.core.validators
import django.db.models.deletion
from django.db import migrations, models

RUN_KINDS = [('preflight', 'Preflight'), ('benchmark', 'Benchmark'), ('planning', 'Planning'),
             ('bootstrap', 'Bootstrap'), ('judge', 'Judge'), ('calibration', 'Calibration')]


class Migration(migrations.Migration):

    dependencies = [
        ('evals', '0003_gate_failed_harness_error_profile_versions'),
        ('serves', '0003_capabilities'),
    ]

    operations = [
        migrations.AddField(
            model_name='evalsuite',
            name='judge_serve',
            field=models.ForeignKey(blank=True, help_text="The serve that grades this suite's answers on a rubric, unless a run names another (it never grades its own answers).", null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='judged_suites', to='serves.serve'),
        ),
        migrations.AlterField(
            model_name='evalrun',
            name='kind',
            field=models.CharField(choices=RUN_KINDS, max_length=16),
        ),
        migrations.AlterField(
            model_name='evalsuite',
            name='kind',
            field=models.CharField(choices=RUN_KINDS, max_length=16),
        ),
        migrations.AlterField(
            model_name='grade',
            name='source',
            field=models.CharField(choices=[('verifier', 'Verifier'), ('judge', 'Judge'), ('operator', 'Operator'), ('calibration', 'Calibration')], max_length=16),
        ),
        migrations.CreateModel(
            name='CalibrationSetting',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('work_class', models.CharField(choices=[('chat', 'Chat'), ('bounded-edit', 'Bounded Edit'), ('multi-file-refactor', 'Multi File Refactor'), ('planning', 'Planning'), ('review', 'Review'), ('long-context', 'Long Context')], max_length=32)),
                ('rate', models.FloatField(default=0.0, help_text="Share of this serve's live requests in this work class that are sampled, 0 to 1 (0.01 is 1 %). 0: off.", validators=[django.core.validators.MinValueValidator(0.0), django.core.validators.MaxValueValidator(1.0)])),
                ('updated_by', models.CharField(blank=True, max_length=150)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('judge_serve', models.ForeignKey(blank=True, help_text='The serve that grades the samples (never the sampled serve itself).', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='calibration_judging', to='serves.serve')),
                ('serve', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='calibration_settings', to='serves.serve')),
            ],
            options={
                'ordering': ['serve__name', 'work_class'],
                'constraints': [models.UniqueConstraint(fields=('serve', 'work_class'), name='one_calibration_setting_per_cell'), models.CheckConstraint(condition=models.Q(('rate__gte', 0.0), ('rate__lte', 1.0)), name='calibration_rate_0_to_1')],
            },
        ),
    ]
