// A second SCIM service provider from another ecosystem for the interop tests: SCIMMY
// (npm `scimmy`) behind its express routers (`scimmy-routers`), with an in-memory store.
// Usage: node scimmy_server.mjs PORT TOKEN   (listens on 127.0.0.1, SCIM base /scim/v2),
// run from a copy next to the node_modules the test installs (pinned versions).
import {randomUUID} from "node:crypto";
import express from "express";
import SCIMMY from "scimmy";
import SCIMMYRouters from "scimmy-routers";

const [port, token] = process.argv.slice(2);
const stores = {User: new Map(), Group: new Map()};

function notFound(id) {
    return new SCIMMY.Types.Error(404, null, `Resource ${id} not found`);
}

function declare(Resource, store, unique) {
    SCIMMY.Resources.declare(Resource)
        .ingress((resource, instance) => {
            const now = new Date().toISOString();
            const data = JSON.parse(JSON.stringify(instance));
            delete data.id;
            delete data.meta;
            for (const [other, rec] of store) {
                if (other !== resource.id && unique && rec[unique] !== undefined
                        && String(rec[unique]).toLowerCase() === String(data[unique]).toLowerCase()) {
                    throw new SCIMMY.Types.Error(409, "uniqueness", `${unique} is already taken`);
                }
            }
            if (resource.id) {
                const old = store.get(resource.id);
                if (!old) throw notFound(resource.id);
                const rec = {...data, id: resource.id,
                             meta: {created: old.meta.created, lastModified: now}};
                store.set(resource.id, rec);
                return rec;
            }
            const id = randomUUID();
            const rec = {...data, id, meta: {created: now, lastModified: now}};
            store.set(id, rec);
            return rec;
        })
        .egress((resource) => {
            if (resource.id) {
                const rec = store.get(resource.id);
                if (!rec) throw notFound(resource.id);
                return rec;
            }
            const all = [...store.values()];
            return resource.filter ? resource.filter.match(all) : all;
        })
        .degress((resource) => {
            if (!store.delete(resource.id)) throw notFound(resource.id);
        });
}

declare(SCIMMY.Resources.User, stores.User, "userName");
SCIMMY.Resources.User.extend(SCIMMY.Schemas.EnterpriseUser, false);
declare(SCIMMY.Resources.Group, stores.Group, null);

const app = express();
app.use("/scim/v2", new SCIMMYRouters({
    type: "bearer",
    handler: (request) => {
        if (request.header("Authorization") !== `Bearer ${token}`) {
            throw new Error("Authorization failure");
        }
        return "tester";
    },
}));
app.listen(Number(port), "127.0.0.1", () => console.log(`SCIMMY on http://127.0.0.1:${port}/scim/v2`));
