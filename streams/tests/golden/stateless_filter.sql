-- Stateless ETL: projection, filter, CASE and string functions over each micro-batch.
== sql
CREATE TABLE access_logs (domain TEXT, status INT, bytes BIGINT, ts TIMESTAMP)
  WITH (topic = 'access-logs', format = 'json');
INSERT INTO errors
SELECT upper(domain) AS key, status,
       CASE WHEN status >= 500 THEN 'server' ELSE 'client' END AS kind, bytes / 1024 AS kib
FROM access_logs
WHERE status >= 400;
== input
0 {"domain":"a.com","status":200,"bytes":2048,"ts":1000}
0 {"domain":"b.com","status":503,"bytes":4096,"ts":1000}
1 {"domain":"c.com","status":404,"bytes":1024,"ts":1000}
== input
0 {"domain":"d.com","status":500,"bytes":0,"ts":2000}
== expected
result errors key=B.COM {"key":"B.COM","status":503,"kind":"server","kib":4}
result errors key=C.COM {"key":"C.COM","status":404,"kind":"client","kib":1}
result errors key=D.COM {"key":"D.COM","status":500,"kind":"server","kib":0}
