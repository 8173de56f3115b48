"""The item routes of the service: POST /items (register items that appeared after export), DELETE /items/{id} and
POST /items/delete (`serve.registry.ItemRegistry`: on every process sharing the state store)."""

from __future__ import annotations

import time

from .schemas import (  # module level: FastAPI reads the annotations
    DeletedItem,
    DeleteItemResponse,
    DeleteItemsRequest,
    DeleteItemsResponse,
    Invalid,
    ItemsRequest,
    ItemsResponse,
)


def add_item_routes(app, *, registry, require_key, sync_items, stage, metrics) -> None:
    """POST /items, DELETE /items/{id} and POST /items/delete on `app` (`registry`: the current generation's,
    `serve.swap.CurrentRegistry`; `stage(name, t0)`: records a stage's time)."""
    from fastapi import Depends, HTTPException
    from fastapi import Path as PathParam

    @app.post("/items", response_model=ItemsResponse, tags=["items"], dependencies=[Depends(require_key)],
              summary="Register items that appeared after export (a new live segment, a new product): scoreable "
                      "at once; acknowledged only once durably stored")
    def post_items(req: ItemsRequest) -> ItemsResponse:
        sync_items()  # an id another process registered counts as a replacement here too
        t0 = time.perf_counter()
        res, errors = registry.register(req.items)
        if errors:
            raise Invalid(errors)
        stage("items", t0)
        for result in ("registered", "replaced", "known_to_bundle"):
            if res[result]:
                metrics.inc("modalrec_items", result, res[result])
        return ItemsResponse(**res)

    def delete_items(ids: list[str]) -> dict[str, str]:
        sync_items()
        t0 = time.perf_counter()
        try:
            results = registry.delete(ids)
        except NotImplementedError as e:
            raise HTTPException(501, str(e)) from None
        stage("items", t0)
        deleted = sum(r == "deleted" for r in results.values())
        if deleted:
            metrics.inc("modalrec_items", "deleted", deleted)
        return results

    @app.delete("/items/{item_id:path}", response_model=DeleteItemResponse, tags=["items"],
                dependencies=[Depends(require_key)],
                responses={404: {"description": "the id is not registered (never, or deleted or expired before)"},
                           409: {"description": "the id is the bundle's: part of the exported model, not deletable"}},
                summary="Delete an item registered through POST /items: unknown from now on (a cold start, never "
                        "retrieved) on every process sharing the state store; acknowledged once durably stored")
    def delete_item(item_id: str = PathParam(..., min_length=1, max_length=256)) -> DeleteItemResponse:
        result = delete_items([item_id])[item_id]
        if result == "bundle_item":
            raise HTTPException(409, f"item '{item_id}' is part of the exported bundle: the trained model's items "
                                     "stay as exported; only items registered through POST /items can be deleted")
        if result == "not_registered":
            raise HTTPException(404, f"item '{item_id}' is not registered: POST /items never registered it, or it "
                                     "was deleted or expired before")
        return DeleteItemResponse(id=item_id, items=registry.n_registered)

    @app.post("/items/delete", response_model=DeleteItemsResponse, tags=["items"], dependencies=[Depends(require_key)],
              summary="Delete several registered items; reports each id (deleted, not_registered, bundle_item) "
                      "without failing the batch; acknowledged once durably stored")
    def delete_items_batch(req: DeleteItemsRequest) -> DeleteItemsResponse:
        results = delete_items(req.ids)
        counts = {r: sum(v == r for v in results.values()) for r in ("deleted", "not_registered", "bundle_item")}
        return DeleteItemsResponse(deleted=counts["deleted"], not_registered=counts["not_registered"],
                                   bundle_items=counts["bundle_item"],
                                   results=[DeletedItem(id=i, result=r) for i, r in results.items()],
                                   items=registry.n_registered)
