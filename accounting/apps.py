from django.apps import AppConfig


class AccountingConfig(AppConfig):
    name = "accounting"
    verbose_name = "Privacy-budget accounting"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from . import accountant

        # RDP curves computed by one process (web, a Celery pool child) are read back by the
        # others instead of being recomputed (see accountant.use_curve_store).
        accountant.use_curve_store(getattr(settings, "FEDGOV_RDP_CURVE_DIR", None) or settings.VAR_DIR / "rdp-curves")
