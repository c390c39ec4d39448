"""The admin API's routers, one per area; each is built by ``router(ctx: AdminContext)``
and included by gateway/admin/api.py."""
