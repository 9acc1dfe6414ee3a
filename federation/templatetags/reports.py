"""Template filters of the report links: who may open a report, asked of `access`."""

from django import template

from .. import access

register = template.Library()


@register.filter
def may_read_history(user, agreement) -> bool:
    """Whether `user` reads `agreement`'s governance history (and so its privacy report)."""
    return access.may_read_history(user, agreement)
