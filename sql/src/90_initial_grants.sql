-- Supabase's roles get the access they have there, when they exist at install time (they are
-- cluster-wide, and the extension does not create them). Other roles, and these when created
-- later, get it from realtime.grant_access(). Grants made here belong to the extension: pg_dump
-- leaves them to CREATE EXTENSION.
select realtime.grant_access(r.rolname)
from pg_catalog.pg_roles as r
where r.rolname in ('anon', 'authenticated', 'service_role')
order by r.rolname;
