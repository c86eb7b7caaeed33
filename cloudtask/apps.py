import os
import sys

from django.apps import AppConfig
from django.core.checks import register
from django.core.signals import request_finished


class CloudTaskConfig(AppConfig):
    name = "cloudtask"
    verbose_name = "Cloud Tasks"

    def ready(self) -> None:
        # Imported here, as Django apps do: these modules reach cloudtask's models, which exist
        # only once the app registry is ready.
        from . import bindings, checks, dispatch, outbox, registry, sync
        from .transports import emulator

        # Importing every app's tasks module registers its tasks, so the endpoint can route any
        # task name it is sent without ever importing a path taken from a request.
        registry.autodiscover()
        bindings.connect_all()
        register(checks.check_settings, "cloudtask")
        register(checks.check_outbox_table, "cloudtask")
        register(checks.check_queues, "cloudtask")
        register(checks.check_deploy, "cloudtask", deploy=True)
        dispatch.set_dispatcher(outbox.OutboxDispatcher())

        def relay_left_behind(sender: object, **kwargs: object) -> None:
            outbox.maybe_relay()

        # Rows a crash, an outage or a slow API left in the outbox are sent by whichever
        # process serves the next request after OUTBOX_RELAY_INTERVAL, in a background thread,
        # so a site with traffic heals itself with no extra process; within the interval this
        # costs a clock read and a comparison. (weak=False: the closure has no other owner.)
        request_finished.connect(
            relay_left_behind, weak=False, dispatch_uid="cloudtask.outbox.relay_left_behind"
        )
        # The local emulator gets CLOUDTASK["QUEUES"] and ["SCHEDULES"], and loses the managed
        # queues and jobs they no longer name, whenever this process connects to it (before
        # keep_up_while_serving may connect).
        emulator.emulator_connected.connect(
            sync.apply_on_connect, dispatch_uid="cloudtask.sync.apply_on_connect"
        )
        # The site keeps the shared local emulator running, so the tasks it holds for the site
        # are delivered whenever the site is up (a no-op with any other transport).
        emulator.keep_up_while_serving(sys.argv, os.environ)
