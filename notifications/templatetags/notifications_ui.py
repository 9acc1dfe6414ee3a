from django import template

from ..selectors import unread_count

register = template.Library()


@register.simple_tag
def unread_notifications(user) -> int:
    """How many of `user`'s notifications are unread (the navigation's badge)."""
    return unread_count(user)
