"""Request shapes that Microsoft Entra ID and Okta send to a SCIM service provider, written
from their public documentation (values are ours), with the action each must yield.

Sources (read for the shapes only):
* Microsoft Learn, "Tutorial: Develop and plan provisioning for a SCIM endpoint in Microsoft
  Entra ID" (request/response examples: create/update/disable/delete user, create group,
  add/remove members, replace displayName) and "Known issues and resolutions with SCIM 2.0
  protocol compliance" (string booleans ``"False"``, capitalised ``op``, path-less replace);
* Okta Developer, "SCIM 2.0 protocol reference" (create user with password, PUT to update
  and to deactivate/reactivate, path-less ``{"op": "replace", "value": {"active": false}}``,
  group create with ``members: []``, add members with ``display``, remove by filter
  ``members[value eq "..."]``, group rename via path-less replace with ``id``).

Each step: ``(name, idp, method, path, body, intent_acts, effect_acts)``; empty lists mean
the SP (scim2-server) refuses the shape and the event must be a failure. ``{u1}``-style
placeholders in paths and bodies are replaced by the ids the SP created; a step named
``create:<key>`` records the created id under ``<key>``.
"""

from __future__ import annotations

from typing import Any

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

Step = tuple[str, str, str, str, Any, list[str], list[str]]


def _patch(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH], "Operations": list(ops)}


def _okta_user(active: bool, **extra: Any) -> dict[str, Any]:
    return {
        "schemas": [USER],
        "userName": "casey.okta@example.test",
        "name": {"givenName": "Casey", "familyName": "Okta"},
        "emails": [{"primary": True, "value": "casey.okta@example.test", "type": "work"}],
        "displayName": "Casey Okta",
        "locale": "en-US",
        "externalId": "00uokta0001",
        "active": active,
        **extra,
    }


CORPUS: list[Step] = [
    # --- Microsoft Entra ID -----------------------------------------------------------------
    (
        "create:e1",
        "entra",
        "POST",
        "/Users",
        {
            "schemas": [USER, ENT],
            "externalId": "entra-0001",
            "userName": "ari@contoso.test",
            "active": True,
            "emails": [{"primary": True, "type": "work", "value": "ari@contoso.test"}],
            "meta": {"resourceType": "User"},
            "name": {"formatted": "Ari Entra", "familyName": "Entra", "givenName": "Ari"},
            "roles": [],
        },
        ["user.create"],
        ["user.create"],
    ),
    (
        "create:e2",
        "entra",
        "POST",
        "/Users",
        {
            "schemas": [USER],
            "externalId": "entra-0002",
            "userName": "bo@contoso.test",
            "active": True,
        },
        ["user.create"],
        ["user.create"],
    ),
    (
        "entra-update-multivalued",
        "entra",
        "PATCH",
        "/Users/{e1}",
        _patch(
            {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "ari2@contoso.test"},
            {"op": "Replace", "path": "name.familyName", "value": "Entra-Two"},
        ),
        ["user.update"],
        ["user.update"],
    ),
    (
        "entra-update-singlevalued",
        "entra",
        "PATCH",
        "/Users/{e1}",
        _patch({"op": "Replace", "path": "userName", "value": "ari.two@contoso.test"}),
        ["user.update"],
        ["user.update"],
    ),
    (
        "entra-add-manager",
        "entra",
        "PATCH",
        "/Users/{e1}",
        _patch({"op": "Add", "path": f"{ENT}:manager", "value": {"value": "{e2}"}}),
        ["user.update"],
        ["user.update"],
    ),
    (
        "entra-disable-string-bool",
        "entra",
        "PATCH",
        "/Users/{e1}",
        _patch({"op": "Replace", "path": "active", "value": "False"}),
        ["user.deactivate"],
        ["user.deactivate"],
    ),
    (
        "entra-disable-again",
        "entra",
        "PATCH",
        "/Users/{e1}",
        _patch({"op": "replace", "path": "active", "value": False}),
        ["user.deactivate"],
        ["user.noop"],
    ),
    (
        "entra-enable-pathless",
        "entra",
        "PATCH",
        "/Users/{e1}",
        _patch({"op": "replace", "value": {"active": True}}),
        ["user.activate"],
        ["user.activate"],
    ),
    (
        "create:eg",
        "entra",
        "POST",
        "/Groups",
        {
            "schemas": [GROUP],
            "externalId": "entra-g-01",
            "displayName": "Entra Admins",
            "meta": {"resourceType": "Group"},
        },
        ["group.create"],
        ["group.create"],
    ),
    (
        "entra-group-add-members",
        "entra",
        "PATCH",
        "/Groups/{eg}",
        _patch(
            {
                "op": "Add",
                "path": "members",
                "value": [{"$ref": None, "value": "{e1}"}, {"$ref": None, "value": "{e2}"}],
            }
        ),
        ["group.member.add"],
        ["group.member.add"],
    ),
    # Entra removes members with a value list; scim2-server refuses that shape (400: "a
    # remove operation carries no value"), which is recorded as a failure, no action.
    (
        "entra-group-remove-members",
        "entra",
        "PATCH",
        "/Groups/{eg}",
        _patch({"op": "Remove", "path": "members", "value": [{"$ref": None, "value": "{e2}"}]}),
        [],
        [],
    ),
    (
        "rfc-group-remove-by-filter",
        "entra",
        "PATCH",
        "/Groups/{eg}",
        _patch({"op": "Remove", "path": 'members[value eq "{e2}"]'}),
        ["group.member.remove"],
        ["group.member.remove"],
    ),
    (
        "rfc-group-remove-absent-member",
        "entra",
        "PATCH",
        "/Groups/{eg}",
        _patch({"op": "Remove", "path": 'members[value eq "{e2}"]'}),
        ["group.member.remove"],
        ["group.noop"],
    ),
    (
        "entra-group-rename",
        "entra",
        "PATCH",
        "/Groups/{eg}",
        _patch({"op": "Replace", "path": "displayName", "value": "Entra Admins (renamed)"}),
        ["group.update"],
        ["group.update"],
    ),
    ("entra-delete-user", "entra", "DELETE", "/Users/{e2}", None, ["user.delete"], ["user.delete"]),
    # --- Okta -------------------------------------------------------------------------------
    (
        "create:o1",
        "okta",
        "POST",
        "/Users",
        _okta_user(True, password="t3mp-Passw0rd!"),
        ["user.create"],
        ["user.create", "user.password.set"],
    ),
    (
        "okta-put-profile",
        "okta",
        "PUT",
        "/Users/{o1}",
        _okta_user(True, displayName="Casey O."),
        ["user.update"],
        ["user.update"],
    ),
    (
        "okta-put-same",
        "okta",
        "PUT",
        "/Users/{o1}",
        _okta_user(True, displayName="Casey O."),
        ["user.update"],
        ["user.noop"],
    ),
    (
        "okta-deactivate-pathless",
        "okta",
        "PATCH",
        "/Users/{o1}",
        _patch({"op": "replace", "value": {"active": False}}),
        ["user.deactivate"],
        ["user.deactivate"],
    ),
    (
        "okta-reactivate-put",
        "okta",
        "PUT",
        "/Users/{o1}",
        _okta_user(True, displayName="Casey O."),
        ["user.update"],
        ["user.activate"],
    ),
    (
        "okta-password-change",
        "okta",
        "PATCH",
        "/Users/{o1}",
        _patch({"op": "replace", "value": {"password": "n3w-Passw0rd!"}}),
        ["user.password.set"],
        ["user.password.set"],
    ),
    (
        "create:og",
        "okta",
        "POST",
        "/Groups",
        {"schemas": [GROUP], "displayName": "Okta Engineers", "members": []},
        ["group.create"],
        ["group.create"],
    ),
    (
        "okta-group-add-member",
        "okta",
        "PATCH",
        "/Groups/{og}",
        _patch(
            {
                "op": "add",
                "path": "members",
                "value": [{"value": "{o1}", "display": "casey.okta@example.test"}],
            }
        ),
        ["group.member.add"],
        ["group.member.add"],
    ),
    (
        "okta-group-rename-pathless",
        "okta",
        "PATCH",
        "/Groups/{og}",
        _patch({"op": "replace", "value": {"id": "{og}", "displayName": "Okta Engineering"}}),
        ["group.update"],
        ["group.update"],
    ),
    (
        "okta-group-put-members",
        "okta",
        "PUT",
        "/Groups/{og}",
        {"schemas": [GROUP], "displayName": "Okta Engineering", "members": [{"value": "{e1}"}]},
        ["group.update"],
        ["group.member.add", "group.member.remove"],
    ),
    (
        "okta-group-remove-by-filter",
        "okta",
        "PATCH",
        "/Groups/{og}",
        _patch({"op": "remove", "path": 'members[value eq "{e1}"]'}),
        ["group.member.remove"],
        ["group.member.remove"],
    ),
    (
        "okta-delete-group",
        "okta",
        "DELETE",
        "/Groups/{og}",
        None,
        ["group.delete"],
        ["group.delete"],
    ),
]
