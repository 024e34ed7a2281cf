"""An existing Celery project, as the Celery page's "Existing Celery app" section shows one.

``celery.py`` is the project's app module (what ``celery -A
tests.backends.celery.shop`` loads) with the one line that names chimeway's
engine, and no ``imports=``; ``notify.py`` builds the engine on that app and
is imported by nothing the app imports. ``unnamed.py`` is the same app
without the line. Read from the environment, as a deployed project would:
``SHOP_BROKER_URL``, ``SHOP_KEY_PREFIX`` (Redis' ``global_keyprefix``, one per
test), ``SHOP_DATABASE_URL``, ``SHOP_QUEUE``, ``SHOP_RESCUE_INTERVAL``
(seconds, or ``none``: the workers run no rescuer, beat does) and
``SHOP_BEAT_EVERY`` (the beat entries' period, seconds).
"""
