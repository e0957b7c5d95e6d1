-- A GROUP BY over an unbounded table without a window is refused with what to do instead.
== sql
CREATE TABLE orders (customer TEXT, amount DOUBLE) WITH (topic = 'orders');
INSERT INTO totals SELECT customer, sum(amount) AS total FROM orders GROUP BY customer;
== input
0 {"customer":"c1","amount":10.0}
== expected
error cannot plan: INSERT INTO totals: GROUP BY over an unbounded table needs a window: FROM TUMBLE(…) or HOP(…)
