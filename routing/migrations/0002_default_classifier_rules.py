from django.db import migrations

from routing.classifier import DEFAULT_RULES


def add_rules(apps, schema_editor):
    rule = apps.get_model("routing", "ClassifierRule")
    for work_class, (priority, keywords) in DEFAULT_RULES.items():
        rule.objects.get_or_create(work_class=work_class,
                                   defaults={"priority": priority, "keywords": "\n".join(keywords)})


def remove_rules(apps, schema_editor):
    apps.get_model("routing", "ClassifierRule").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("routing", "0001_initial")]
    operations = [migrations.RunPython(add_rules, remove_rules)]
