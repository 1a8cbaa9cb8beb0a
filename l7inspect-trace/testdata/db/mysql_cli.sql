SELECT * FROM items;
INSERT INTO items VALUES (4,'kiwi');
UPDATE items SET name='plum' WHERE id > 2;
SELECT * FROM missing;
DELETE FROM items WHERE id = 4;
UPDATE items SET name='fig' WHERE id = 3;
use mysql
use shop2
SELECT 1;
delimiter //
SELECT 1; SELECT id FROM shop.items//
delimiter ;
SELECT name FROM shop.items WHERE id = 1;
