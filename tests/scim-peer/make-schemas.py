"""Write schemas.json and resource-types.json for `scim2-server --schema/--resource-type`:
the RFC defaults (User, Group, EnterpriseUser) plus a stand-in for SocialTalent's User extension.
usage: python make-schemas.py OUTDIR   (run with the python of the venv that has scim2-server;
install.sh does this and writes OUTDIR=$SCIM_CFG, default .scim-cfg)"""
import json, sys, importlib.resources as r

out = sys.argv[1] if len(sys.argv) > 1 else "."
res = r.files("scim2_server") / "resources"
schemas = json.loads((res / "default-schemas.json").read_text())
rts = json.loads((res / "default-resource-types.json").read_text())
EXT = "urn:ietf:params:scim:schemas:extension:socialtalent:2.0:User"


def attr(name, multi=False, required=False):
    return {"name": name, "type": "string", "multiValued": multi, "description": name,
            "required": required, "caseExact": False, "mutability": "readWrite",
            "returned": "default", "uniqueness": "none"}


schemas.append({
    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"], "id": EXT, "name": "SocialTalentUser",
    "description": "Stand-in for SocialTalent's user fields (names as assumed in SPEC.md)",
    "attributes": [attr("coreTeam"), attr("role"), attr("reportsTo"),
                   attr("learningPaths", multi=True), attr("teamsToManage", multi=True),
                   attr("udf_Customer_ID"), attr("udf_costCenter"), attr("udf_location"),
                   attr("udf_employeeNumber")],
    "meta": {"resourceType": "Schema", "location": "/v2/Schemas/" + EXT}})
for rt in rts:
    if rt["id"] == "User":
        rt.setdefault("schemaExtensions", []).append({"schema": EXT, "required": False})
for name, doc in (("schemas.json", schemas), ("resource-types.json", rts)):
    with open(f"{out}/{name}", "w") as f:
        json.dump(doc, f, indent=1)
